"""The lab's own tests use the shared fixtures; so can any custom payload directory."""

pytest_plugins = ["vfiolib.fixtures"]
