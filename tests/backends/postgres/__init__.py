"""The PostgreSQL backend on a real server: several processes, the CLI, wake-ups."""
