"""Dalaba (大喇叭): the wire kernel shared by the controller and the terminals.

`dalaba.protocol` is the one wire contract; `dalaba.signing` the signature schemes;
`dalaba.mqtt` the thin asyncio adapter over paho-mqtt. This package imports nothing of
ours above it; the `dalaba` command lives in `dalaba_ops`.
"""

__version__ = "0.2.0"
