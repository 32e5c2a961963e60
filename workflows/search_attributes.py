"""Custom search attributes that make campaigns filterable in the Temporal UI and CLI.

No personal data here: search attributes are stored unencrypted
(docs/design.md, "Search attributes are not encrypted").
"""

from temporalio.common import SearchAttributeKey, SearchAttributePair, TypedSearchAttributes

SHOP_ID = SearchAttributeKey.for_keyword("ShopId")
CAMPAIGN_KIND = SearchAttributeKey.for_keyword("CampaignKind")
CAMPAIGN_PHASE = SearchAttributeKey.for_keyword("CampaignPhase")
CAMPAIGN_STATE = SearchAttributeKey.for_keyword("CampaignState")

ALL = [SHOP_ID, CAMPAIGN_KIND, CAMPAIGN_PHASE, CAMPAIGN_STATE]


def initial(shop_id: str, kind: str, phase: str) -> TypedSearchAttributes:
    return TypedSearchAttributes(
        [
            SearchAttributePair(SHOP_ID, shop_id),
            SearchAttributePair(CAMPAIGN_KIND, kind),
            SearchAttributePair(CAMPAIGN_PHASE, phase),
            SearchAttributePair(CAMPAIGN_STATE, "scheduled"),
        ]
    )


async def register(client, namespace: str = "default") -> None:
    """Register the keys on a server that does not know them yet (test server, a new cluster)."""
    from temporalio.api.enums.v1 import IndexedValueType
    from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest, ListSearchAttributesRequest
    from temporalio.service import RPCError, RPCStatusCode

    try:
        known = await client.operator_service.list_search_attributes(ListSearchAttributesRequest(namespace=namespace))
        missing = {k.name for k in ALL} - set(known.custom_attributes)
    except RPCError as err:  # the time-skipping test server cannot list, only add
        if err.status != RPCStatusCode.UNIMPLEMENTED:
            raise
        missing = {k.name for k in ALL}
    if missing:
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(
                namespace=namespace,
                search_attributes={name: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD for name in sorted(missing)},
            )
        )
