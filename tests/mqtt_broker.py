"""The loopback Mosquitto of the MQTT tests (it lives in :mod:`sdk.testing.mosquitto` for benchmarks and the demo)."""

from sdk.testing.mosquitto import MOSQUITTO, MosquittoBroker, free_port

__all__ = ["MOSQUITTO", "MosquittoBroker", "free_port"]
