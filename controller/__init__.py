"""The county controller: REST API, console, database, schedules, speech and MQTT dispatch."""
