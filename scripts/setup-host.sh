#!/usr/bin/env bash
# Installs the Debian packages vfio-lab needs, only those missing; safe to run again.
# Also makes sure apt's lists know the stock kernel package the default scenario boots.
# --qemu adds what building the lab's own QEMU needs (machine.qemu: lab);
# --test adds what only the test suite needs (the lab's QEMU included, and gitlab-ci-local
# through npm, pinned).
set -euo pipefail

PACKAGES=(
    qemu-system-x86   # the emulator (7.2 in bookworm: edu, intel-iommu, virtio-iommu)
    qemu-utils        # qemu-img: qcow2 base images and per-VM overlays
    debootstrap       # the guest root filesystem
    e2fsprogs         # mkfs.ext4 -d: an image from a directory, no loop mounts
    busybox-static    # the initramfs
    cpio              # packs the initramfs
    kmod              # depmod for the initramfs module subset
    openssh-client    # ssh-keygen for the lab's keys
    python3-venv      # the project's virtualenv
    gcc               # the uAPI layout test compiles against the kernel headers
    linux-libc-dev    # <linux/vfio.h> for that test
    make flex bison bc libelf-dev libssl-dev xz-utils  # building kernels from source
    ccache            # shared by every kernel build: a config flip rebuilds little
    git               # local:PATH kernel trees are identified by their commit
    patch             # kernels: [{source, patches}] and the lab QEMU's series
    uuid-dev libcap-dev  # the kernel's C selftests (kselftest-vfio links libuuid, kselftest-iommu libcap)
)
QEMU_PACKAGES=(     # lab/artifacts/qemu.py BUILD_DEPENDS: QEMU from Debian's source, x86_64 only
    libglib2.0-dev libpixman-1-dev libslirp-dev libfdt-dev ninja-build dpkg-dev
)
TEST_PACKAGES=(
    chromium          # the suite renders report.html in a real (headless) browser
    rsync             # gitlab-ci-local's shell executor copies the project into each job with it
)
# The suite runs `vfio-lab ci gitlab`'s pipeline with it. 4.74 and later need Node 22
# (Set.prototype.union); 4.73.0 runs on the Node 20 of this project's machines.
GITLAB_CI_LOCAL=4.73.0
TEST=""
case "${1:-}" in
    --test) PACKAGES+=("${QEMU_PACKAGES[@]}" "${TEST_PACKAGES[@]}"); TEST=1 ;;
    --qemu) PACKAGES+=("${QEMU_PACKAGES[@]}") ;;
esac

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    [ "$status" = "install ok installed" ] || missing+=("$pkg")
done
# Debian's npm only where there is none: a Node from elsewhere (NodeSource) brings its own,
# and Debian's package would conflict with it.
if [ -n "$TEST" ] && ! command -v npm >/dev/null; then
    missing+=(npm)
fi

has_kernel_candidate() {
    # No grep -q: it would stop reading early, and pipefail would count apt-cache's SIGPIPE.
    apt-cache policy linux-image-amd64 2>/dev/null | grep 'Candidate: [0-9]' >/dev/null
}

if [ ${#missing[@]} -gt 0 ] || ! has_kernel_candidate; then
    echo "setup-host: apt-get update" >&2
    $SUDO apt-get update -q
fi
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup-host: installing ${missing[*]}" >&2
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if [ -n "$TEST" ]; then
    if [ "$(gitlab-ci-local --version 2>/dev/null || true)" != "$GITLAB_CI_LOCAL" ]; then
        echo "setup-host: npm install -g gitlab-ci-local@$GITLAB_CI_LOCAL" >&2
        $SUDO npm install -g --no-audit --no-fund "gitlab-ci-local@$GITLAB_CI_LOCAL"
    fi
    # Installed is not enough: a Node too old for it fails here, not in the test.
    if [ "$(gitlab-ci-local --version 2>/dev/null || true)" != "$GITLAB_CI_LOCAL" ]; then
        echo "setup-host: gitlab-ci-local $GITLAB_CI_LOCAL does not run with node $(node --version)" >&2
        exit 1
    fi
fi
