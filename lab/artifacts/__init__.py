"""What a cell boots: kernels (stock, Debian source, local trees), initramfs, root filesystem, keys."""
