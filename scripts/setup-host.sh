#!/usr/bin/env bash
# Installs the Debian packages vfio-lab needs, only those missing; safe to run again.
# Also makes sure apt's lists know the stock kernel package the default scenario boots,
# and that the user who runs the lab (the one who ran sudo, or the caller) has what a
# normal user needs: subordinate ids for the root filesystem's build, and group kvm where
# /dev/kvm belongs to it. The only part of the lab that needs root; it uses sudo itself
# for what is missing, and does nothing when nothing is.
# --qemu adds what building the lab's own QEMU needs (machine.qemu: lab);
# --arm64 adds what aarch64 guests need (machine.arch: aarch64): their emulator and the
# cross compiler for their kernels and C selftests;
# --test adds what only the test suite needs: what --qemu and --arm64 add (it builds the
# lab's QEMU and boots aarch64 guests), and gitlab-ci-local through npm, pinned.
set -euo pipefail

PACKAGES=(
    qemu-system-x86   # the emulator (7.2 in bookworm: edu, intel-iommu, virtio-iommu)
    qemu-utils        # qemu-img: qcow2 base images and per-VM overlays
    mmdebstrap        # the guest root filesystem, as root or as a user (--mode=unshare)
    uidmap            # newuidmap/newgidmap: a user's namespace for that build
    e2fsprogs         # mkfs.ext4 -d: an image from a directory, no loop mounts
    busybox-static    # the initramfs
    cpio              # packs the initramfs
    kmod              # depmod for the initramfs module subset
    openssh-client    # ssh-keygen for the lab's keys
    python3-venv      # the project's virtualenv
    gcc               # the uAPI layout test compiles against the kernel headers
    linux-libc-dev    # <linux/vfio.h> for that test
    make flex bison bc libelf-dev libssl-dev xz-utils lz4  # building kernels from source (lz4: base.config packs the bzImage with it)
    ccache            # shared by every kernel build: a config flip rebuilds little
    git               # local:PATH kernel trees are identified by their commit
    patch             # kernels: [{source, patches}] and the lab QEMU's series
    uuid-dev libcap-dev  # the kernel's C selftests (kselftest-vfio links libuuid, kselftest-iommu libcap)
)
QEMU_PACKAGES=(     # lab/artifacts/qemu.py BUILD_DEPENDS: QEMU from Debian's source, any guest arch
    libglib2.0-dev libpixman-1-dev libslirp-dev libfdt-dev ninja-build dpkg-dev
)
ARM64_PACKAGES=(    # lab/model/arches.py: Aarch64's qemu_package and toolchain
    qemu-system-arm         # qemu-system-aarch64 (7.2 in bookworm: virt, GICv3, smmuv3)
    gcc-aarch64-linux-gnu   # cross-builds aarch64 kernels (ARCH=arm64) and C selftests
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
    --test) PACKAGES+=("${QEMU_PACKAGES[@]}" "${ARM64_PACKAGES[@]}" "${TEST_PACKAGES[@]}"); TEST=1 ;;
    --qemu) PACKAGES+=("${QEMU_PACKAGES[@]}") ;;
    --arm64) PACKAGES+=("${ARM64_PACKAGES[@]}") ;;
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

# The user the lab will run as: root itself needs nothing more.
LAB_USER="${SUDO_USER:-$(id -un)}"
if [ "$LAB_USER" != root ]; then
    # The user's first range of each file, as the lab reads it, must hold 65536 ids; new
    # ranges start past the highest anyone has (Debian's useradd starts at 100000).
    has_range() {
        awk -F: -v name="$LAB_USER" -v uid="$(id -u "$LAB_USER")" \
            '($1 == name || $1 == uid) && NF == 3 { found = ($3 >= 65536); exit } END { exit !found }' "$1"
    }
    if ! has_range /etc/subuid || ! has_range /etc/subgid; then
        start=$({ cat /etc/subuid /etc/subgid 2>/dev/null || true; } \
            | awk -F: 'BEGIN { m = 100000 } NF == 3 && $2 + $3 > m { m = $2 + $3 } END { print m }')
        range="$start-$((start + 65535))"
        echo "setup-host: usermod --add-subuids $range --add-subgids $range $LAB_USER" >&2
        $SUDO usermod --add-subuids "$range" --add-subgids "$range" "$LAB_USER"
    fi
    if [ -e /dev/kvm ]; then
        kvm_group=$(stat -c %G /dev/kvm)
        if [ "$kvm_group" != root ] && ! id -nG "$LAB_USER" | tr ' ' '\n' | grep -x "$kvm_group" >/dev/null; then
            echo "setup-host: usermod -aG $kvm_group $LAB_USER (log in again for it to count)" >&2
            # Not fatal: without KVM the lab runs its guests under TCG, and says why.
            $SUDO usermod -aG "$kvm_group" "$LAB_USER" \
                || echo "setup-host: $LAB_USER stays out of group $kvm_group: guests run under TCG" >&2
        fi
    fi
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
