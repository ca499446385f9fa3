"""Dalaba (大喇叭): shared pieces of the controller, the edge agent and the simulator.

`dalaba.protocol` is the one wire contract; `dalaba.signing` the signature schemes;
`dalaba.mqtt` the thin asyncio adapter over paho-mqtt; `dalaba.cli` the `dalaba` command.
"""

__version__ = "0.1.0"
