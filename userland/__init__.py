"""userland: what runs in other processes (capture readers, pcap writers).

Theory of operation. Programs that reach the kernel through its devices, as a
FreeBSD program reaches it through /dev/bpf: they include the kernel packages'
headers only (bpf/bpf_h.py), never the server. zbuf.py is libpcap's
zero-copy reader; pcap_file.py and pcapng_file.py write capture files;
pcap_compile.py is libpcap's filter compiler (ctypes); pktprint.py is
tcpdump's line printer; pktmerge.py merges the workers' streams by time.
"""
