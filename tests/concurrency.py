"""Race helper: run each job on its own thread (so its own PostgreSQL connection), released at once."""
import threading

from django.db import connection


def race(jobs) -> list[object]:
    """Results in job order; an exception a job raised is returned in its place for the test to inspect."""
    barrier = threading.Barrier(len(jobs))
    results: list[object] = [None] * len(jobs)

    def run(index, job):
        try:
            barrier.wait()
            results[index] = job()
        except Exception as exc:  # returned, and asserted on by the caller
            results[index] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i, job)) for i, job in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return results
