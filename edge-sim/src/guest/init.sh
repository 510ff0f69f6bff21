#!/bin/busybox sh
# PID 1 of the edge-sim board. Generated into the initramfs by edge-sim (src/guest/init.sh).
# Lines starting with "edge-sim:" on the console are read by the host when a boot fails.
/bin/busybox mkdir -p /proc /sys /dev /tmp /run /root /sbin /usr/bin /usr/sbin /payload
/bin/busybox --install -s
export PATH=/payload:/bin:/sbin:/usr/bin:/usr/sbin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
hostname edge-sim

# Kernel modules, already in dependency order (virtio-pci, virtio-net, 9p, virtio-rng).
while read -r m; do
    insmod "/lib/modules/$m.ko" || echo "edge-sim: insmod $m failed"
done < /lib/modules/load-order

# QEMU user-mode network: 10.0.2.15, and 10.0.2.2 is the host's loopback. No default route,
# so nothing in the board can reach any other address.
ip link set lo up
i=0
while [ ! -e /sys/class/net/eth0 ] && [ "$i" -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
if ip addr add 10.0.2.15/24 dev eth0 && ip link set eth0 up; then :; else
    echo "edge-sim: no network (eth0 missing)"
fi

if ! mount -t 9p -o trans=virtio,version=9p2000.L,cache=mmap,msize=262144 payload /payload; then
    echo "edge-sim: cannot mount the payload directory"
fi
[ -c /dev/kvm ] || echo "edge-sim: /dev/kvm missing"

echo "edge-sim: ready"
# The command agent: one connection per command (see src/guest/agent.sh), any number at once.
while true; do
    nc -ll -p @AGENT_PORT@ -e /sbin/edge-agent
    echo "edge-sim: agent listener exited; restarting"
    sleep 1
done
