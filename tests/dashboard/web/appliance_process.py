"""An appliance's MQTT side in its own process, so that a test can SIGKILL it and its will fires.

Usage: ``python -m tests.dashboard.web.appliance_process PORT SITE DEVICE``. It connects
with a retained offline will, publishes its retained online status and a heartbeat,
prints ``ready`` and waits to be killed.
"""

from __future__ import annotations

import sys
import time

import paho.mqtt.client as mqtt

from sdk.messages import EngineHealth, Heartbeat, Status
from sdk.topics import TopicKind, topic
from tests.dashboard.conftest import PACKAGE


def main() -> None:
    port, site, device = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{site}.{device}", protocol=mqtt.MQTTv5)
    offline = Status(site=site, device=device, state="offline")
    client.will_set(topic(site, device, TopicKind.STATUS), offline.to_json(), qos=1, retain=True)
    client.connect("127.0.0.1", port, keepalive=5)
    client.loop_start()
    online = Status(site=site, device=device, state="online", version="0.4.1", packages=[PACKAGE])
    client.publish(topic(site, device, TopicKind.STATUS), online.to_json(), qos=1, retain=True).wait_for_publish(10)
    beat = Heartbeat(
        site=site,
        device=device,
        uptime_s=12.0,
        queues={"decode": 1, "infer": 0},
        latency_ms_p50=35.0,
        latency_ms_p95=80.0,
        engines=[
            EngineHealth(package=PACKAGE.name, engine="onnxruntime", device="cpu", providers=["CPUExecutionProvider"])
        ],
    )
    client.publish(topic(site, device, TopicKind.HEARTBEAT), beat.to_json(), qos=0).wait_for_publish(10)
    print("ready", flush=True)
    time.sleep(3600)


if __name__ == "__main__":
    main()
