"""server/devices: the kernel boundary, each worker's device files.

Theory of operation. devfs.py is the generic framework (runtime directories,
Unix-socket listeners, SO_PEERCRED, one connection per open file, the
system-call messages of mbuf/sys_devio.py, wakeups, release at close); a
device is a `Device(name, open)` whose open returns a `DevFile`. bpfdev.py is
/dev/bpf on it. A new device (netmap, ctl) adds a module here and one entry in
the worker's device list (`worker_devices` in bpfdev's caller, server/app.py).
"""
