"""One guest: the QEMU command line, the QEMU process and its QMP, SSH, the console, the accelerator."""
