import pytest

from mergehub.runs.models import MergeRun


@pytest.fixture
def dave(django_user_model, acme):
    """A second member of acme (carol is the first): reviews need an author and a reviewer."""
    from mergehub.accounts.models import Membership, Role
    from tests.conftest import _user

    user = _user(django_user_model, "dave")
    Membership.objects.create(user=user, team=acme, role=Role.MEMBER)
    return user


def make_run(team, author, *, status="succeeded", name="merge") -> MergeRun:
    """A run row as a worker leaves it (review is about the row, not the merge)."""
    return MergeRun.objects.create(team=team, author=author, name=name, method="task_arithmetic", budget="0.5",
                                   status=status, config={"merge_method": "task_arithmetic"})


@pytest.fixture
def carols_run(acme, carol):
    return make_run(acme, carol, name="carol's merge")
