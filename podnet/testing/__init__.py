"""Test and benchmark helpers shared by tests/, netns_tests/ and bench/ (never used by daemons)."""
