"""config.sql: the array literals a round sends and the array text it reads, through the real
PostgreSQL."""
from decimal import Decimal

import numpy as np
import pytest
from django.db import connection

from config.sql import bool_array, decimal_array, int_array, int_columns


@pytest.mark.django_db
def test_array_literals_reach_postgresql_as_the_values_sent():
    # given integers (a numpy column and a list), exact decimals and flags
    ints = np.array([3, -7, 2**40, 0], dtype=np.int64)
    decimals = [Decimal("150.000000"), Decimal("-0.000001"), Decimal("12.5")]
    flags = np.array([True, False, True])
    # when they are sent as array literals
    with connection.cursor() as cursor:
        cursor.execute("SELECT %s::bigint[], %s::bigint[], %s::numeric[], %s::boolean[], %s::bigint[]",
                       [int_array(ints), int_array([5, np.int64(6)]), decimal_array(decimals), bool_array(flags),
                        int_array([])])
        got = cursor.fetchone()
    # then PostgreSQL reads exactly those values
    assert got == ([3, -7, 2**40, 0], [5, 6], decimals, [True, False, True], [])


@pytest.mark.django_db
def test_a_bad_element_is_refused_by_the_server_not_spliced_into_sql():
    with connection.cursor() as cursor, pytest.raises(Exception):
        cursor.execute("SELECT %s::bigint[]", ["{1,2); DROP TABLE x; --}"])


@pytest.mark.django_db
def test_int_columns_reads_string_agg_rows_and_no_rows():
    # given rows aggregated into one text column by PostgreSQL
    with connection.cursor() as cursor:
        cursor.execute("SELECT string_agg(concat_ws(',', a, -a, a * 10), ',' ORDER BY a) FROM generate_series(1, 3) a")
        text = cursor.fetchone()[0]
    # then they parse back into rows of integers; no rows (NULL) is an empty array
    assert int_columns(text, 3).tolist() == [[1, -1, 10], [2, -2, 20], [3, -3, 30]]
    assert int_columns(None, 3).shape == (0, 3)
    with pytest.raises(ValueError):
        int_columns("1,2", 3)
