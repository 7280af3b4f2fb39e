"""userland: what runs in other processes (capture readers, pcap writers).

Theory of operation. Programs that reach the kernel through its devices, as a
FreeBSD program reaches it through /dev/bpf: they include the kernel packages'
headers only (bpf/bpf_h.py), never the server. zbuf.py is libpcap's
zero-copy reader.
"""
