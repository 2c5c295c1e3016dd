"""Rules of chains, evaluated in `position` order."""

from __future__ import annotations

from fastapi import APIRouter

from tessera.api.deps import ChainId, RuleId, Store, build, oid, sent
from tessera.api.schemas import RuleCreate, RuleUpdate
from tessera.model import Rule

router = APIRouter(tags=["rules"])


@router.get("/chains/{chain_id}/rules")
def list_chain_rules(chain_id: ChainId, store: Store) -> list[Rule]:
    """In evaluation order."""
    return store.rules_of(oid("chains", chain_id))


@router.post("/chains/{chain_id}/rules", status_code=201)
def create_rule(chain_id: ChainId, body: RuleCreate, store: Store) -> Rule:
    """Inserted at `position` (1-based; 0 or absent appends; at most one past the end)."""
    return store.create(build(Rule, body, chain_id=oid("chains", chain_id)))


@router.get("/rules/{rule_id}")
def get_rule(rule_id: RuleId, store: Store) -> Rule:
    return store.get(Rule, oid("rules", rule_id))


@router.put("/rules/{rule_id}")
def update_rule(rule_id: RuleId, body: RuleUpdate, store: Store) -> Rule:
    """A different `position` moves the rule within its chain."""
    return store.update(Rule, oid("rules", rule_id), sent(body))


@router.delete("/rules/{rule_id}", status_code=204)
def delete_rule(rule_id: RuleId, store: Store) -> None:
    store.delete(Rule, oid("rules", rule_id))
