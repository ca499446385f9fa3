"""The top floor: the `dalaba` command, the demo, the broker's configuration and the
provisioning of terminals. It may import anything below it (the kernel `dalaba`, the
controller, the agent and the simulator); nothing below imports it."""
