#!/bin/sh
# Install, inspect and purge a staprun-rs .deb with the real dpkg, adduser and
# dpkg-statoverride, in a throwaway overlay of / (a private mount namespace, overlayfs with
# its upper layer on a tmpfs, chroot): nothing on this machine changes. If systemtap-runtime
# is installed it is purged first, inside the overlay only.
#
#   packaging/try-deb-in-overlay.sh target/dist/staprun-rs_0.1.0_amd64.deb [--fresh]
#
# Purging systemtap-runtime leaves its statoverride (root stapusr 4754 /usr/bin/staprun),
# which postinst then keeps; --fresh removes it first, as on a machine that never had it.
#
# Needs root, unshare(1) and overlayfs; / must be a single file system (submounts other than
# /proc, /dev and /sys are not in the overlay).
set -eu
deb=$(realpath "$1")
fresh=${2:-}
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
top=$(mktemp -d)
trap 'rmdir "$top"' EXIT
unshare -m --propagation private sh -eu -c '
top=$1 deb=$2 fresh=$3
mount -t tmpfs tmpfs "$top"
mkdir "$top/upper" "$top/work" "$top/root"
mount -t overlay overlay -o "lowerdir=/,upperdir=$top/upper,workdir=$top/work" "$top/root"
for d in proc dev sys; do mount --rbind "/$d" "$top/root/$d"; done
cp "$deb" "$top/root/tmp/staprun-rs.deb"
chroot "$top/root" /bin/sh -c "
set -u
export PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive
if dpkg -s systemtap-runtime >/dev/null 2>&1; then
    echo \"# dpkg --purge systemtap systemtap-runtime (in the overlay)\"
    dpkg --purge systemtap systemtap-runtime >/dev/null
fi
echo \"# statoverride before: \$(dpkg-statoverride --list /usr/bin/staprun || echo none)\"
if [ \"$fresh\" = --fresh ] && dpkg-statoverride --list /usr/bin/staprun >/dev/null; then
    echo \"# --fresh: dpkg-statoverride --remove /usr/bin/staprun\"
    dpkg-statoverride --remove /usr/bin/staprun
fi
echo \"# dpkg -i staprun-rs.deb\"
dpkg -i /tmp/staprun-rs.deb || exit 1
echo \"# statoverride: \$(dpkg-statoverride --list /usr/bin/staprun || echo none)\"
ls -l /usr/bin/staprun /usr/libexec/staprun/stapio
getent group stapusr stapsys stapdev
ls -ld /lib/modules/\$(uname -r)/systemtap 2>&1
/usr/bin/staprun -V
echo \"# dpkg --purge staprun-rs\"
dpkg --purge staprun-rs || exit 1
echo \"# statoverride after purge: \$(dpkg-statoverride --list /usr/bin/staprun || echo none)\"
"
'  sh "$top" "$deb" "$fresh"
