"""Sans-IO HTTP/1.1 decisions: request checks, resolve, ranges, validators, sidecars, heads.

Theory of operation. Nothing here imports trio or touches a socket: each
module takes parsed requests and file-system facts and returns what to answer,
so it is tested as plain functions.
"""
