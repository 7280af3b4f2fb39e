"""userland: what runs in other processes (capture readers, pcap writers).

Theory of operation. Programs that reach the kernel through its devices, as a
FreeBSD program reaches it through /dev/bpf: they include the kernel packages'
headers only (bpf/bpf_h.py, mbuf/sys_devio.py), never the server.

  devdir.py        where a running server's device files are (the runtime
                   directory, one instance per port, one directory per worker)
                   and how to find them
  dev.py           one device file: open, ioctl (with a passed memfd), read,
                   poll, close
  bpfdev.py        a BPF capture set up and read as libpcap's pcap-bpf.c does,
                   in buffered or zero-copy mode: `BpfCapture`, `Packet`
  zbuf.py          libpcap's zero-copy reader over the two shared buffers
  pcap_file.py, pcapng_file.py  capture-file writers
  pcap_compile.py  libpcap's filter compiler (ctypes)
  pktprint.py      tcpdump's line printer
  pktmerge.py      the workers' packet streams merged by time
  capture.py       `nomapd capture`: the tcpdump for nm0 built from the above
                   (live merge of every worker's /dev/bpf, --keys)
"""
