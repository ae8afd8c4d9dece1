"""Soak runs for people, not collected by pytest (no test_ files): crash.py (kill -9 cycles under a
write load) and load.py (thousands of connections and watchers held for minutes). See
docs/reliability.md for the commands and the figures of the last runs."""
