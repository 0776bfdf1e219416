"""The notification flusher's batching (no broker: messages are handed to on_message as
kombu would). It sleeps on a condition, so these show it wakes for what it must: the
first message of a batch, the end of the quiet window, and stop()."""
import threading

from orchestrator_lite.openstack.events import NotificationListener


class Message:
    def __init__(self):
        self.acked = False

    def ack(self):
        self.acked = True


def notification(n):
    return {"event_type": "floatingip.update.end", "payload": {"floatingip": {"id": str(n)}}}


def listener(**timing):
    # kombu connects lazily: nothing here opens a socket
    return NotificationListener("memory://", store=None, queue="test", **timing)


def in_thread(target):
    result = []
    thread = threading.Thread(target=lambda: result.append(target()), daemon=True)
    thread.start()
    return thread, result


def test_a_burst_is_one_batch_in_arrival_order():
    events = listener(quiet=0.05)
    messages = [Message() for _ in range(5)]
    for n, message in enumerate(messages):
        events.on_message(notification(n), message)
    assert all(m.acked for m in messages)
    batch = events._next_batch()
    assert [payload["floatingip"]["id"] for _, payload in batch] == ["0", "1", "2", "3", "4"]
    assert events._pending == []


def test_an_idle_flusher_wakes_for_the_first_message():
    events = listener(quiet=0.01)
    thread, result = in_thread(events._next_batch)
    thread.join(0.2)
    assert thread.is_alive()  # nothing pending: it waits
    events.on_message(notification(7), Message())
    thread.join(10)
    assert not thread.is_alive()
    assert result == [[("floatingip.update.end", {"floatingip": {"id": "7"}})]]
    events.stop()


def test_stop_ends_an_idle_flusher():
    events = listener()
    thread, result = in_thread(events._next_batch)
    thread.join(0.2)
    assert thread.is_alive()
    events.stop()
    thread.join(10)
    assert not thread.is_alive()
    assert result == [None]
