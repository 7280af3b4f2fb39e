"""Helpers every test package shares: written once here, imported everywhere.

certs    self-signed certificates for "localhost"
clients  client `ssl.SSLContext`s (verifying, or accepting any certificate)
files    file contents the tests can regenerate from a size
leaks    the counter names that must return to zero, from `Kernel.leaks()`
pair     `ConnectionPair`: one kernel socket and its wire, driven in memory
tlsseal  TLS records sealed and opened independently of ktls
wire     the wire takes what the NIC queued (and TCP gets the ACK)
"""
