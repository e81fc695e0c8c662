"""What runs leave: TAP parsing, test records, summary.json, junit.xml, report.html, compare."""
