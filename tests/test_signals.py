"""lit_imit.signals: SIGTERM and SIGHUP end a run like Ctrl-C, never between sending a command and logging it."""

from __future__ import annotations

import os
import signal
import time

import pytest

from lit_imit.signals import STOP_SIGNALS, StopSignal, stop_signals_as_interrupt, uninterrupted


def _signal_self(signum: int) -> None:
    os.kill(os.getpid(), signum)
    time.sleep(0.2)  # Python runs the handler at the next opportunity, well within this


@pytest.mark.parametrize("signum", STOP_SIGNALS, ids=lambda s: signal.Signals(s).name)
def test_stop_signals_raise_a_keyboard_interrupt_and_the_old_handlers_come_back(signum):
    before = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    with pytest.raises(KeyboardInterrupt, match=signal.Signals(signum).name) as info:
        with stop_signals_as_interrupt():
            _signal_self(signum)
    assert isinstance(info.value, StopSignal) and info.value.signum == signum
    assert {s: signal.getsignal(s) for s in STOP_SIGNALS} == before


def test_a_signal_inside_uninterrupted_waits_for_the_end_of_the_block():
    done = []
    with pytest.raises(StopSignal, match="SIGTERM"):
        with stop_signals_as_interrupt():
            with uninterrupted():
                _signal_self(signal.SIGTERM)
                done.append("command logged")
            done.append("next step")
    assert done == ["command logged"]


def test_while_stopping_a_second_signal_is_ignored_and_a_first_one_waits():
    stopped = []
    with stop_signals_as_interrupt():
        try:
            _signal_self(signal.SIGTERM)
        except KeyboardInterrupt:
            with uninterrupted(stopping=True):  # e.g. sending stop to the arm
                _signal_self(signal.SIGHUP)
                stopped.append(True)
    assert stopped == [True]
    with pytest.raises(StopSignal, match="SIGHUP"):  # no stop under way: the signal is held, then raised
        with stop_signals_as_interrupt():
            with uninterrupted(stopping=True):
                _signal_self(signal.SIGHUP)
                stopped.append(True)
    assert stopped == [True, True]
