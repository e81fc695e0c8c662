"""vfio-lab: boot disposable QEMU guests with a vIOMMU and run VFIO tests in them."""
