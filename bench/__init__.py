"""Benchmarks: the engine against plain baselines measured in the same run, on this machine.

    python -m bench                          # every part, 3 rounds, medians
    python -m bench --only email,history --rounds 1 --participants 5

Each part starts its own servers (an in-memory Temporal dev server, the time-skipping test server,
a loopback SMTP inbox, a Twilio-compatible API), runs the worker in this process, interleaves
engine and baseline rounds on the same server, and stops by itself. Results go to
``bench/results/`` as markdown and JSON. Figures, never assertions: see ``bench/README.md``.
"""
