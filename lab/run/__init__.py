"""Running cells through their stages (prepare, boot, payload, triage, record), alone or as a matrix."""
