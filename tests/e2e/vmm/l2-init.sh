# L2 guest /init body (after guest::INIT_PRELUDE). Kernel command line: vmm_t=TRANSPORT vmm_r=RING vmm_mode=e2e|bench.
# Prints `L2-INIT uptime=S` first, then `L2-RESULT PASS ...` or `L2-RESULT FAIL <reason>`, and powers off.
read UP _ < /proc/uptime
echo "L2-INIT uptime=$UP"
arg() { sed -n "s/.*$1=\([^ ]*\).*/\1/p" /proc/cmdline; }
T=$(arg vmm_t); R=$(arg vmm_r); MODE=$(arg vmm_mode)
L1=10.0.0.1; ME=10.0.0.2; PORT=7777
done_() { echo "L2-RESULT $*"; poweroff -f; sleep 10; }
fail() { done_ "FAIL $*"; }

for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_mmio failover net_failover; do
  insmod /lib/modules/$m.ko || fail "insmod-$m"
done

# Waits up to $1 tenths of a second for eth0.
wait_eth0() {
  i=0
  while [ ! -e /sys/class/net/eth0 ]; do
    i=$((i+1)); [ $i -gt $1 ] && return 1
    usleep 100000
  done
}
net_up() {
  wait_eth0 100 || return 1
  ip addr add $ME/24 dev eth0 && ip link set eth0 up
}
# Pings L1 until it answers (its tap may come up after us): up to $1 tries of one second.
ping_l1() {
  i=0
  until ping -c 1 -W 1 $L1 >/dev/null 2>&1; do
    i=$((i+1)); [ $i -ge $1 ] && return 1
  done
}
# Socket buffers big enough for a full window of datagrams (a drop costs a 300 ms retransmit stall).
echo 4194304 > /proc/sys/net/core/rmem_default; echo 4194304 > /proc/sys/net/core/rmem_max
WINDOW=$(arg vmm_window); [ -n "$WINDOW" ] || WINDOW=64
# The stream gives up well inside the cell timeout, so a stalled one reports how far it got.
stream() { # COUNT SIZE
  net-check stream --to $L1:$PORT --count $1 --size $2 --window $WINDOW --timeout-s 180
}

insmod /lib/modules/virtio_net.ko || fail "insmod-virtio_net"
# Where each module sits (only shown with a failed cell): a vCPU dump's RIP in module space names its function.
echo "L2: modules:"; cat /proc/modules
net_up || fail "virtio_net-not-probed (no eth0)"
DEV=
for d in /sys/bus/virtio/drivers/virtio_net/virtio*; do [ -e "$d" ] && DEV=$d; done
[ -n "$DEV" ] || fail "virtio_net-not-bound"
FEAT=$(cat $DEV/features)
PATH_=$(readlink -f $DEV)
bit() { echo "$FEAT" | cut -c$(($1+1)); }
V1=$(bit 32); PACKED=$(bit 34)
echo "L2: device $PATH_ features $FEAT"
case $T in
  mmio*) case $PATH_ in */pci*) fail "transport: device $PATH_ is not virtio-mmio";; esac ;;
  pci*)
    case $PATH_ in */pci*) ;; *) fail "transport: device $PATH_ is not on PCI";; esac
    ID=$(cat $DEV/../device)
    if [ $T = pci ]; then WANT=0x1041; else WANT=0x1000; fi
    [ "$ID" = $WANT ] || fail "pci-device-id $ID want $WANT" ;;
esac
case $T in *legacy) WANT_V1=0;; *) WANT_V1=1;; esac
[ $R = packed ] && WANT_P=1 || WANT_P=0
[ "$V1" = $WANT_V1 ] || fail "feature VERSION_1(32)=$V1 want $WANT_V1 (features $FEAT)"
[ "$PACKED" = $WANT_P ] || fail "feature RING_PACKED(34)=$PACKED want $WANT_P (features $FEAT)"

ping_l1 30 || fail "no-ping-reply-from-L1"
ping -c 3 -W 2 $L1 || fail "ping"

if [ "$MODE" = bench ]; then
  mbps() { awk '/receiver/ { for (i = 1; i <= NF; i++) if ($i == "Mbits/sec") v = $(i-1) } END { print v }'; }
  UP_=$(iperf3 -c $L1 -t 5 -f m 2>&1 | tee /tmp/up | mbps)
  DOWN=$(iperf3 -c $L1 -t 5 -f m -R 2>&1 | tee /tmp/down | mbps)
  [ -n "$UP_" ] || { cat /tmp/up; fail "iperf3 L2->L1"; }
  [ -n "$DOWN" ] || { cat /tmp/down; fail "iperf3 L1->L2"; }
  done_ "PASS l2_to_l1_mbps=$UP_ l1_to_l2_mbps=$DOWN init_uptime=$UP"
fi

T1=$(cut -d' ' -f1 /proc/uptime)
stream 100000 256 > /tmp/stream.log 2>&1; RC=$?
cat /tmp/stream.log
[ $RC = 0 ] || fail "net-check-100k: $(tail -1 /tmp/stream.log)"
RATE=$(sed -n 's/.* rate=\([0-9]*\)pps.*/\1/p' /tmp/stream.log)
T2=$(cut -d' ' -f1 /proc/uptime)
for n in 1 2 3 4 5; do
  ping -c 2 -W 2 $L1 >/dev/null || fail "reload-$n: ping before rmmod"
  rmmod virtio_net || fail "reload-$n: rmmod virtio_net"
  [ -e /sys/class/net/eth0 ] && fail "reload-$n: eth0 still present after rmmod"
  insmod /lib/modules/virtio_net.ko || fail "reload-$n: insmod virtio_net"
  net_up || fail "reload-$n: no eth0 after insmod"
  ping_l1 10 || fail "reload-$n: no ping after insmod"
  stream 2000 256 || fail "reload-$n: net-check after insmod"
done
T3=$(cut -d' ' -f1 /proc/uptime)
done_ "PASS init_uptime=$UP stream_pps=$RATE stream_s=$(awk -v a=$T1 -v b=$T2 'BEGIN { print b - a }') reload_s=$(awk -v a=$T2 -v b=$T3 'BEGIN { print b - a }') features=$FEAT"
