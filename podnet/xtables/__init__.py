"""Firewall seams: iptables-restore, nft -f and ipset restore runners, each with a fake."""
