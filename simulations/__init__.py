"""Fleet scenarios of zkapex-flwr: declarative files, their runner and their report."""
