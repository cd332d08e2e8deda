"""A paho publisher in its own process, for measuring the ingest without sharing its interpreter.

Usage: ``python -m tests.dashboard.ingest.publisher_process PORT COUNT``. It
prints ``ready``, then for each line read from stdin: ``bare`` publishes COUNT
findings QoS 1 on a topic nobody reads, ``findings`` publishes them on the
device's finding topic; each prints ``<kind> <messages per second>`` once the
broker has acknowledged them all.
"""

from __future__ import annotations

import sys
import time

import paho.mqtt.client as mqtt

from sdk.topics import TopicKind, topic
from tests.dashboard.conftest import make_finding


def main() -> None:
    port, count = int(sys.argv[1]), int(sys.argv[2])
    payloads = [make_finding(seq=seq).to_json() for seq in range(count)]
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="rate-publisher", protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(100)  # a bounded window, as an appliance's reporter has
    client.connect("127.0.0.1", port)
    client.loop_start()
    targets = {"bare": "bench/bare", "findings": topic("st-marys", "ct-1", TopicKind.FINDING)}
    print("ready", flush=True)
    for line in sys.stdin:
        kind = line.strip()
        start = time.perf_counter()
        infos = [client.publish(targets[kind], payload, qos=1) for payload in payloads]
        for info in infos:
            info.wait_for_publish(120)
        print(kind, count / (time.perf_counter() - start), flush=True)
    client.disconnect()
    client.loop_stop()


if __name__ == "__main__":
    main()
