"""mailer: email campaigns with compliance built in.

The public API; the `mailer` command is a thin layer over it::

    import mailer

    with mailer.open_workspace("config.toml") as ws:
        summary = mailer.send_campaign(ws, "campaigns/cloud-audit.toml")
        print(f"{summary.sent} sent, blocked: {summary.blocked}")

Every error is a `MailerError` with an `exit_code` (2 bad input, 3 compliance refusal,
1 anything else); nothing here prints, prompts or exits.
"""
from __future__ import annotations

import os
from pathlib import Path

__version__ = "0.1.0"

from .campaign import (
    CampaignStatus,
    PreviewResult,
    RunSummary,
    SenderShare,
    campaign_status,
    plan_campaign,
    preview_campaign,
    send_campaign,
)
from .errors import (
    ComplianceRefusal,
    ConfigError,
    CsvError,
    DatabaseGone,
    DatabaseMissing,
    InputError,
    InvalidRows,
    ListNotFound,
    MailerError,
    NotFound,
    StoreError,
    TemplateError,
    TransportError,
)
from .importer import ImportOutcome
from .importer import import_contacts as _import_contacts
from .optouts import ComplaintsResult, apply_spooled_optouts, record_complaints, suppress, unsuppress
from .planning import Plan, PlannedRecipient
from .privacy import Explanation, ForgetResult, RetentionItem, RetentionReport, explain, forget, retention
from .states import SendState
from .transport import Delivery, Envelope, Transport
from .workspace import Workspace, open_workspace


def import_contacts(ws: Workspace, csv_path: str | os.PathLike[str], list_name: str, *,
                    skip_invalid: bool = False) -> ImportOutcome:
    """Validate a contacts CSV and upsert it into the list `list_name`: all or nothing (a bad row
    raises CsvError listing every bad row and nothing changes), unless skip_invalid."""
    return _import_contacts(ws, Path(csv_path), list_name, skip_invalid=skip_invalid)


__all__ = [
    "CampaignStatus", "ComplaintsResult", "ComplianceRefusal", "ConfigError", "CsvError", "Delivery", "Envelope", "Explanation",
    "ForgetResult", "ImportOutcome", "InputError", "InvalidRows", "ListNotFound", "MailerError", "NotFound",
    "Plan", "PlannedRecipient", "PreviewResult", "RetentionItem", "RetentionReport", "RunSummary", "SenderShare",
    "SendState", "StoreError", "DatabaseGone", "DatabaseMissing", "TemplateError", "Transport", "TransportError",
    "Workspace", "__version__",
    "apply_spooled_optouts", "campaign_status", "explain", "forget", "import_contacts", "open_workspace", "plan_campaign",
    "preview_campaign", "record_complaints", "retention", "send_campaign", "suppress", "unsuppress",
]
