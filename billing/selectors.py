from decimal import Decimal

from .models import Account


def wallet_balances(*, organisation_id: int) -> dict[str, Decimal]:
    """Available and held balances of one organisation's wallet (zero before any money moved)."""
    balances = dict(Account.objects.filter(organisation_id=organisation_id, currency="CNY",
                                           kind__in=[Account.Kind.BUYER_WALLET, Account.Kind.BUYER_HELD])
                    .values_list("kind", "balance"))
    return {"currency": "CNY", "available": balances.get(Account.Kind.BUYER_WALLET, Decimal(0)),
            "held": balances.get(Account.Kind.BUYER_HELD, Decimal(0))}
