"""Admission of whole requests: a place each, refused only while every place is taken."""

import threading
import time

import pytest

from nemo_stt.engine.admission import Admission, QueueFull


def test_a_full_engine_refuses_with_a_retry_delay_and_accepts_again_once_a_place_is_free():
    admission = Admission(2, retry_after=lambda: 0.2)
    first, second = admission.try_enter(), admission.try_enter()
    with pytest.raises(QueueFull) as full:
        admission.try_enter()
    assert full.value.retry_after == 1.0  # never less than a second
    assert "busy" in str(full.value)
    first.release()
    first.release()  # a ticket gives its place back once
    third = admission.try_enter()
    with pytest.raises(QueueFull):
        admission.try_enter()
    second.release()
    third.release()
    assert admission.active == 0


def test_waiting_callers_get_the_next_free_place():
    admission = Admission(1, retry_after=lambda: 5.0)
    held = admission.try_enter()
    entered = []
    waiter = threading.Thread(target=lambda: entered.append(admission.enter()))
    waiter.start()
    time.sleep(0.05)
    assert not entered
    held.release()
    waiter.join(5)
    assert len(entered) == 1 and admission.active == 1
    entered[0].release()


def test_a_place_handed_over_is_given_back_by_its_new_holder_only():
    admission = Admission(1, retry_after=lambda: 1.0)
    ticket = admission.try_enter()
    place = ticket.hand_over()
    ticket.release()  # spent: the place is the new holder's
    assert admission.active == 1
    place.release()
    assert admission.active == 0
