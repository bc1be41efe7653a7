"""Raw AMQP for the fault drills: what `fleet` deliberately cannot do.

`fleet` has no command that publishes an arbitrary message, and it should not:
every job it publishes has been validated. The drills need malformed and hostile
messages on the wire, so this script publishes them with pika (installed by
scripts/chaos.sh into a venv under the user's cache directory; the management
plugin, which rabbitmqadmin needs, stays off).

    amqp.py hostile PREFIX IMAGE   publish the hostile set to PREFIXfleet.jobs
                                   (confirmed, mandatory); print a JSON summary:
                                   {"published": N, "valid_message_ids": [...]}
    amqp.py delete PREFIX NAME...  delete the named queues (PREFIX + NAME) and the
                                   PREFIXfleet.control exchange, if they exist
    amqp.py raw PREFIX MESSAGE_ID BODY
                                   publish BODY as it is to PREFIXfleet.jobs with
                                   that message id (confirmed)

Environment: FLEET_QUEUE (default amqp://guest:guest@127.0.0.1:5672/%2f).
"""

import json
import os
import random
import sys

import pika

URL = os.environ.get("FLEET_QUEUE") or "amqp://guest:guest@127.0.0.1:5672/%2f"


def connect():
    params = pika.URLParameters(URL)
    params.blocked_connection_timeout = 30
    params.socket_timeout = 10
    return pika.BlockingConnection(params)


def hostile_messages(image):
    """Exactly 100 (body, properties) pairs, none of which is a runnable job.

    Each message carries a valid image (unless the image is the point), so the
    worker has to find the hostile field itself, not stop at a missing image.
    """
    msgs = []

    def add(body, message_id=None, headers=None, priority=None):
        if not isinstance(body, (bytes, bytearray)):
            body = json.dumps(body).encode()
        msgs.append((bytes(body), message_id, headers, priority))

    def job(**fields):
        # A model the scripted LLM knows: a message that got through would run.
        j = {"task": "hostile", "image": image, "llm": {"model": "chaos-quick"}}
        j.update(fields)
        return j

    # Not JSON, or not a JSON object.
    for b in [b"", b"hello", b"{", b"\xff\xfe\xfd", b"\x00" * 64, b"null", b"42",
              b"[]", b"{\"task\": \"t\"",
              b"[" * 200_000, b"{\"a\":" * 50_000]:
        add(b)
    add([job()])  # a job file's array, not a job
    add({"jobs": [job()]})  # a job file's object form, not a job

    # Wrong types and values.
    for fields in [
        {"task": 5}, {"task": None}, {"task": ["a"]}, {"task": "   "},
        {"id": 7}, {"image": 5}, {"limits": "big"}, {"limits": {"memory_mb": "lots"}},
        {"limits": {"pids": -1}}, {"limits": {"max_iter": 3}},
        {"priority": 99}, {"priority": "high"}, {"env": ["A=1"]}, {"env": {"1A": "x"}},
        {"secrets": ["NOT-A-NAME"]}, {"artifacts": "*"}, {"llm": {"temperature": "hot"}},
        {"webhook": {"url": 5}}, {"unknown_field": True}, {"workdir": "relative/dir"},
    ]:
        add(job(**fields))
    add({"image": image})  # no task

    # Huge strings (all under 1 MiB, so the parser has to deal with them, and the
    # reason it gives must not carry them whole into the dead letter's headers).
    add(job(id="a" * 100_000))
    add(job(image="x" * 500_000))
    add(job(workdir="/" + "d/" * 300_000 + ".."))
    add(job(artifacts=["a/" * 200_000 + ".."]))
    add(job(env={"K" * 300_000 + "-": "v"}))
    add(job(secrets=["S" * 200_000 + "-"]))
    add(job(id="../" * 100_000))
    add(job(task="T" * 900_000, id="../huge"))

    # Over 1 MiB: dropped unread.
    add(job(task="A" * (1 << 20)))
    add(os.urandom(2 << 20))
    add(b"{" + b" " * (4 << 20) + b"}")

    # Path traversal in the job id (the body).
    for bad in ["../../etc", "..", ".", "a/b", "/etc/passwd", "..\\..\\x", "jobs/../../x",
                "", "x" * 65, "\uff45\uff54\uff43", "a\nb", "\u202e.."]:
        add(job(id=bad))

    # Path traversal in the message id, with bodies that are invalid as well.
    for mid in ["../../etc", "..", ".", "/tmp/x", "jobs/../x", "a/../../b"]:
        add(job(id=mid), message_id=mid)
    add(b"not json", message_id="../../../../tmp/fleet-chaos-escape")
    # A message id and a job id that disagree: rejected, recorded under the message id.
    add(job(id="chaos-hostile-a"), message_id="chaos-hostile-b")
    add(b"garbage", message_id="chaos-hostile-c")
    add(job(id="chaos-hostile-d", priority=77), message_id="chaos-hostile-d")

    # Artifact globs that leave the workdir.
    for globs in [["../../*"], ["/etc/*"], ["a/../../b"], ["**/../../**"], ["..", "ok.txt"],
                  ["src/**", "../x"], ["[invalid"], ["/"], ["./../x"]]:
        add(job(id="chaos-glob", artifacts=globs))

    # Inputs that name something outside what the job may read: a store key that
    # climbs out of its prefix, and host paths of the worker (a queued job must
    # carry its input in the store; `fleet submit` uploads it).
    add(job(input={"store_key": "../../etc/passwd"}))
    add(job(input={"store_key": ""}))
    add(job(input={"path": "/etc"}))
    add(job(input={"path": "/root"}))
    add(job(input={"path": "."}))
    add(job(input={"git": {"url": "  "}}))
    add(job(input={"path": "/etc", "store_key": "x"}))

    # NUL bytes.
    add(job(id="a\u0000b"))
    # A NUL in the workdir passes the job parser today; Docker refuses it (500):
    # with an id, the job fails cleanly after its attempts and is dead-lettered.
    add(job(id="chaos-nul-workdir", workdir="/work\u0000space"), message_id="chaos-nul-workdir")
    add(job(id=None, workdir="/work\u0000space"))  # "id": null, so no id at all
    add(job(env={"A\u0000B": "x"}))
    add(job(secrets=["A\u0000"]))
    add(job(image="img\u0000:latest"))
    add(job(artifacts=["ok\u0000/../../x"]))
    add(job(input={"store_key": "a\u0000/../b"}))
    add(b'{"task": "t"\x00}')
    add(b'{"task": "t", "id": "a\x00b"}')  # a raw NUL inside a JSON string
    add(job(id="chaos\u0000hostile"), message_id="chaos\u0000hostile")

    # Headers and properties a producer should never send, with bodies that are
    # invalid too.
    add(b"{}", headers={"x-fleet-attempt": -1})
    add(b"{}", headers={"x-fleet-attempt": 2**40})
    add(b"{}", headers={"x-fleet-attempt": "many", "x-fleet-enqueued-at": "yesterday"})
    add(b"{}", headers={"x-fleet-attempt": 4294967295})
    add(b"{}", priority=255)
    add(b"{}", headers={"x-evil": "h" * 100_000})

    # Pad to exactly 100 with random bytes (seeded: the same set every run).
    rng = random.Random(5)
    while len(msgs) < 100:
        add(bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 4096))))
    if len(msgs) != 100:
        raise SystemExit(f"the hostile set has {len(msgs)} messages, not 100")
    return msgs


def hostile(prefix, image):
    conn = connect()
    ch = conn.channel()
    ch.confirm_delivery()
    queue = prefix + "fleet.jobs"
    valid_ids = []
    n = 0
    for body, mid, headers, priority in hostile_messages(image):
        props = pika.BasicProperties(
            delivery_mode=2,
            content_type="application/json",
            message_id=mid,
            headers=headers,
            priority=priority,
        )
        # Raises on a nack or an unroutable (returned) message.
        ch.basic_publish(exchange="", routing_key=queue, body=body, properties=props,
                         mandatory=True)
        n += 1
        if mid is not None and valid_id(mid):
            valid_ids.append(mid)
    conn.close()
    print(json.dumps({"published": n, "valid_message_ids": sorted(set(valid_ids))}))


def valid_id(s):
    ok = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
    return 1 <= len(s) <= 64 and s not in (".", "..") and all(c in ok for c in s)


def delete(prefix, names):
    conn = connect()
    for name in names:
        ch = conn.channel()
        try:
            ch.queue_delete(queue=prefix + name)
        except pika.exceptions.ChannelClosedByBroker:
            pass
        finally:
            if ch.is_open:
                ch.close()
    ch = conn.channel()
    try:
        ch.exchange_delete(exchange=prefix + "fleet.control")
    except pika.exceptions.ChannelClosedByBroker:
        pass
    conn.close()


def raw(prefix, message_id, body):
    conn = connect()
    ch = conn.channel()
    ch.confirm_delivery()
    ch.basic_publish(
        exchange="",
        routing_key=prefix + "fleet.jobs",
        body=body.encode(),
        properties=pika.BasicProperties(delivery_mode=2, message_id=message_id),
        mandatory=True,
    )
    conn.close()


def main(argv):
    if len(argv) == 4 and argv[0] == "raw":
        raw(argv[1], argv[2], argv[3])
    elif len(argv) >= 3 and argv[0] == "hostile":
        hostile(argv[1], argv[2])
    elif len(argv) >= 2 and argv[0] == "delete":
        delete(argv[1], argv[2:])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
