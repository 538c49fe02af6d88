# SPDX-License-Identifier: GPL-2.0
#
# Helpers of the rust_nvme_dma shell tests, sourced after ktap_helpers.sh.
# The sourcing test sets DRIVER, the driver to bind, and DEV, its disk.

# Polls the shell condition $2 every 0.1 s for at most $1 seconds.
wait_for() {
	tries=$(($1 * 10))
	while ! eval "$2"; do
		tries=$((tries - 1))
		[ $tries -gt 0 ] || return 1
		sleep 0.1
	done
}

# GNU dd, for iflag=direct and oflag=direct: the path is needed, as a
# busybox shell may run its own dd applet for a plain "dd".
gnu_dd() {
	for dir in $(echo "$PATH" | tr : ' '); do
		"$dir/dd" --version 2>/dev/null | grep -q coreutils && echo "$dir/dd" && return
	done
}

# The first NVMe controller (PCI class 010802).
first_nvme_controller() {
	for pci in /sys/bus/pci/devices/*; do
		[ "$(cat "$pci/class")" = 0x010802 ] && basename "$pci" && return
	done
}

# Binds PCI device $1 to DRIVER through driver_override (loading the driver
# if needed) and waits for DEV.
bind_controller() {
	pci=/sys/bus/pci/devices/$1
	current=$(basename "$(readlink "$pci/driver")" 2>/dev/null)
	if [ "$current" != "$DRIVER" ]; then
		[ -z "$current" ] || echo "$1" > "$pci/driver/unbind" || return
		echo "$DRIVER" > "$pci/driver_override" || return
		if [ -d "/sys/module/$DRIVER" ]; then
			echo "$1" > /sys/bus/pci/drivers_probe || return
		else
			modprobe "$DRIVER" || return
		fi
	fi
	wait_for 10 "[ -b $DEV ]" && return
	ktap_print_msg "$DEV missing 10 s after binding $1 to $DRIVER"
	return 1
}

# The value of $2 in the driver's statistics $1 ("name value" lines).
stat_value() {
	awk -v name="$2" '$1 == name { print $2; found = 1 } END { exit !found }' "$1"
}
