"""How many image slots a retrieval occupies."""

from flows.limits import image_limit_name, image_slots, source_tag


def test_a_study_occupies_one_slot_per_instance_up_to_the_limit():
    assert image_slots(6, 100) == 6
    assert image_slots(500, 100) == 100  # too big to share: it runs alone
    assert image_slots(None, 100) == 1  # the source did not say how many
    assert image_slots(0, 100) == 1


def test_limit_names_are_per_source():
    assert source_tag("vna") == "source:vna"
    assert image_limit_name("vna") == "source-images-vna"
