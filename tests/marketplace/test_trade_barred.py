"""Who may not trade with whom, one pair at a time and many at once: pure, no database."""
import random

import numpy as np

from marketplace.selectors import trade_barred, trades_barred


def test_many_pairs_at_once_are_barred_exactly_as_one_by_one():
    # given random buyers and suppliers, some the same organisation, and some related pairs
    rng = random.Random(3)
    # (-1: a side the round could not find, which no related pair may match by arithmetic chance)
    buyers = np.array([rng.randint(-1, 30) for _ in range(2000)], dtype=np.int64)
    suppliers = np.array([rng.randint(-1, 30) for _ in range(2000)], dtype=np.int64)
    marked = {(rng.randint(1, 30), rng.randint(1, 30)) for _ in range(20)}
    related = frozenset(p for a, b in marked for p in ((a, b), (b, a)))

    for pairs in (related, frozenset()):
        # when they are checked at once
        barred = trades_barred(buyer_ids=buyers, supplier_ids=suppliers, related=pairs)

        # then each answer is the single check's, and both reasons occur
        assert barred.tolist() == [trade_barred(buyer_id=b, supplier_id=s, related=pairs)
                                   for b, s in zip(buyers.tolist(), suppliers.tolist())]
    assert (buyers == suppliers).any() and (barred & (buyers != suppliers)).sum() == 0
    assert (trades_barred(buyer_ids=buyers, supplier_ids=suppliers, related=related) & (buyers != suppliers)).any()
