"""Township broadcast schedules."""
