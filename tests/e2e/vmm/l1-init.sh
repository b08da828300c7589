# L1 guest /init body (after guest::INIT_PRELUDE). Runs the L2 cells named on the kernel command line
# (`vmm_cells=VMM:TRANSPORT:RING,...`, VMM `mini` or `qemu`; `vmm_mode=e2e|bench`), one fresh L2 boot each, and
# relays one line per cell to the host over this console:
#   e2e:   `PASS vmm transport=T ring=R vmm=V boot_s=B cell_s=C` or `FAIL vmm transport=T ring=R vmm=V <reason>`
#          followed by the L2 console between `--- L2 console ... ---` and `--- end L2 console ---`;
#   bench: `BENCH vmm=V transport=T ring=R boot_s=B l2_to_l1_mbps=X l1_to_l2_mbps=Y` (or the FAIL line).
# Ends with `VMM-L1-DONE` and powers off.
arg() { sed -n "s/.*$1=\([^ ]*\).*/\1/p" /proc/cmdline; }
CELLS=$(arg vmm_cells); MODE=$(arg vmm_mode); CELL_TIMEOUT=$(arg vmm_cell_timeout); SHOW=$(arg vmm_show)
[ -n "$CELL_TIMEOUT" ] || CELL_TIMEOUT=300
# `vmm_kvm_amd=P1,P2` on the command line: kvm-amd module parameters (e.g. npt=0).
KVM_AMD_PARAMS=$(arg vmm_kvm_amd | tr ',' ' ')
for m in irqbypass kvm ccp kvm-amd tun; do
  P=; [ $m = kvm-amd ] && P=$KVM_AMD_PARAMS
  insmod /lib/modules/$m.ko $P || echo "VMM-L1: insmod $m $P failed"
done
echo "VMM-L1: kvm_amd npt=$(cat /sys/module/kvm_amd/parameters/npt 2>/dev/null)"
[ -e /dev/kvm ] || echo "VMM-L1: no /dev/kvm"
ip link set lo up
echo 4194304 > /proc/sys/net/core/rmem_default; echo 4194304 > /proc/sys/net/core/rmem_max
if [ "$MODE" = bench ]; then
  iperf3 -s -D
else
  net-check echo --bind 0.0.0.0:7777 > /tmp/echo.log 2>&1 &
fi
now() { cut -d' ' -f1 /proc/uptime; }
# The benchmark runs mini-vmm with checksum/TSO offloads, as QEMU's virtio-net has them by default.
MINI_NET=; [ "$MODE" = bench ] && MINI_NET=,offload=on
NOOFF=csum=off,guest_csum=off,gso=off,host_tso4=off,host_tso6=off,host_ecn=off,host_ufo=off,guest_tso4=off,guest_tso6=off,guest_ecn=off,guest_ufo=off

# QEMU as the L2 VMM (the reference); $4: extra virtio-net properties.
run_qemu() { # T R CMDLINE [PROPS]
  G=
  case $1 in
    mmio-legacy) M=microvm,rtc=off; DEV=virtio-net-device; G="-global virtio-mmio.force-legacy=on" ;;
    mmio) M=microvm,rtc=off; DEV=virtio-net-device; G="-global virtio-mmio.force-legacy=off" ;;
    pci-legacy) M=pc; DEV=virtio-net-pci,romfile=,disable-legacy=off,disable-modern=on ;;
    pci-transitional) M=pc; DEV=virtio-net-pci,romfile=,disable-legacy=off,disable-modern=off ;;
    pci) M=microvm,pcie=on,rtc=off; DEV=virtio-net-pci,romfile=,disable-legacy=on,disable-modern=off ;;
    *) echo "unknown transport $1"; return 2 ;;
  esac
  [ "$2" = packed ] && DEV=$DEV,packed=on
  [ -n "$4" ] && DEV=$DEV,$4
  exec qemu-system-x86_64 -M $M -enable-kvm -cpu host -m 256 -smp 1 -nodefaults -no-user-config \
    -display none -serial stdio -no-reboot -kernel /l2/vmlinuz -initrd /l2/initrd.gz -append "$3" \
    -netdev tap,id=n0,ifname=tap0,script=no,downscript=no,vhost=off -device $DEV,netdev=n0 $G
}

# Ends a VMM that overran the cell timeout: SIGTERM first (mini-vmm then reports its device counters), then SIGKILL.
stop_vmm() {
  # The result line first: the cell's `wait` returns as soon as the VMM exits.
  echo "L2-RESULT FAIL cell timeout (${CELL_TIMEOUT} s)" >> $LOG
  kill -TERM $PID 2>/dev/null; sleep 5; kill -9 $PID 2>/dev/null
}

for C in $(echo "$CELLS" | tr ',' ' '); do
  V=${C%%:*}; TR=${C#*:}; T=${TR%%:*}; R=${TR#*:}
  LOG=/tmp/l2-$V-$T-$R.log
  rm -f $LOG
  CMD="console=ttyS0 panic=-1 $(arg vmm_l2_log) vmm_window=$(arg vmm_window) vmm_t=$T vmm_r=$R vmm_mode=$MODE"
  T0=$(now)
  if [ $V = qemu ]; then
    ( run_qemu $T $R "$CMD" ) < /dev/null > $LOG 2>&1 &
  elif [ $V = qemu-nooff ]; then
    # QEMU without checksum/segmentation offloads: the feature set mini-vmm offers today.
    ( run_qemu $T $R "$CMD" $NOOFF ) < /dev/null > $LOG 2>&1 &
  else
    # Every 60 s mini-vmm prints each vCPU's exit count and RIP (shown with a failed cell: a hung L2 shows whether
    # it still runs and where).
    VMM_GLUE_DUMP_SECS=60 mini-vmm --kernel /l2/vmlinuz --initrd /l2/initrd.gz --cmdline "$CMD" --mem 256 --cpus 1 \
      --net tap=tap0,transport=$T,ring=$R$MINI_NET --console $LOG < /dev/null > $LOG.vmm 2>&1 &
  fi
  PID=$!
  TAP=; BOOT=
  # Configure the tap as soon as the VMM creates it; note when L2's init starts; enforce the cell timeout.
  while kill -0 $PID 2>/dev/null; do
    if [ -z "$TAP" ] && [ -e /sys/class/net/tap0 ]; then
      ip addr add 10.0.0.1/24 dev tap0 && ip link set tap0 up && TAP=1
    fi
    if [ -z "$BOOT" ] && grep -q L2-INIT $LOG 2>/dev/null; then
      BOOT=$(awk -v a=$T0 -v b=$(now) 'BEGIN { printf "%.2f", b - a }')
    fi
    if [ -n "$TAP" ] && [ -n "$BOOT" ]; then break; fi
    if awk -v a=$T0 -v b=$(now) -v t=$CELL_TIMEOUT 'BEGIN { exit !(b - a > t) }'; then
      stop_vmm; break
    fi
    usleep 50000
  done
  # Wait for the VMM, still bounded by the cell timeout (counted from the VMM's start).
  LEFT=$(awk -v a=$T0 -v b=$(now) -v t=$CELL_TIMEOUT 'BEGIN { l = int(t - (b - a)); print (l > 0 ? l : 0) }')
  ( sleep $LEFT; kill -0 $PID 2>/dev/null && stop_vmm ) & WD=$!
  wait $PID; RC=$?
  kill $WD 2>/dev/null
  CELL=$(awk -v a=$T0 -v b=$(now) 'BEGIN { printf "%.1f", b - a }')
  RES=$(grep -a 'L2-RESULT' $LOG | head -1 | sed 's/.*L2-RESULT //' | tr -d '\r')
  [ -n "$BOOT" ] || BOOT=none
  case "$RES" in
    PASS*)
      if [ "$RC" != 0 ]; then RES="FAIL vmm exit status $RC after: $RES"; fi ;;
    FAIL*) ;;
    *)
      if grep -aq 'Kernel panic' $LOG; then RES="FAIL L2 panic: $(grep -a 'Kernel panic' $LOG | head -1)"
      else RES="FAIL vmm exited with status $RC and no L2 result"; fi ;;
  esac
  grep -a 'net-check:' $LOG | sed 's/^/INFO vmm /'
  case "$RES" in
    PASS*)
      if [ "$MODE" = bench ]; then
        echo "BENCH vmm=$V transport=$T ring=$R boot_s=$BOOT ${RES#PASS }"
      else
        echo "PASS vmm transport=$T ring=$R vmm=$V boot_s=$BOOT cell_s=$CELL ${RES#PASS }"
      fi
      if [ "$SHOW" = 1 ]; then
        echo "--- L2 console ($V $T $R) ---"; cat $LOG
        [ -e $LOG.vmm ] && { echo "--- VMM output ---"; cat $LOG.vmm; }
        echo "--- end L2 console ---"
      fi ;;
    *)
      echo "FAIL vmm transport=$T ring=$R vmm=$V boot_s=$BOOT cell_s=$CELL ${RES#FAIL }"
      echo "--- L2 console ($V $T $R) ---"
      cat $LOG
      [ -e $LOG.vmm ] && { echo "--- VMM output ---"; cat $LOG.vmm; }
      echo "--- end L2 console ---" ;;
  esac
  # A tap a VMM left behind (persistent or still held) would confuse the next cell.
  ip link del tap0 2>/dev/null
done
echo VMM-L1-DONE
poweroff -f
