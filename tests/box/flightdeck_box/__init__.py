"""Cluster in a box, by concern: layout and shell (what the others build on), dns, tls, imds
(the servers the hosts see), hosts, network and firewall (the parts of `Box`), box (the
poll loop) and cli. tests/box/box.py is the entry point; see tests/box/README.md."""
