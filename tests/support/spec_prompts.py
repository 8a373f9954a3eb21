"""Prompts for speculative decoding's tests and benchmark (benchmarks/speculative.py): an extractive
set (a question about a given ~1,000-token document, quote-and-summarise, editing a given code file),
open chat, and prompts where nothing in the prompt can be quoted. Written for sysinfer; not a corpus."""

from __future__ import annotations

DOCUMENT = """\
Harbor Ledger Service: operations handbook (version 4.2)

1. Purpose. The Harbor Ledger Service records every container that enters or leaves the Eastgate
terminal. Each record holds the container number, the vessel name, the berth, the customs status and
the time of the last scan. The service answers queries from the gate clerks, the customs office and
the billing system. It runs on three servers named ledger-a, ledger-b and ledger-c in the north data
room, and on one standby server named ledger-d in the south data room.

2. Installation. Install the package with the command `dnf install harbor-ledger-4.2`. The
configuration file is /etc/harbor/ledger.toml. The data directory is /var/lib/harbor/ledger and must
be on the fast disk array, never on the system disk. The service listens on port 7340 for queries and
on port 7341 for replication between servers. Open both ports in the firewall with
`firewall-cmd --add-port=7340/tcp --add-port=7341/tcp --permanent` and reload the firewall.

3. Starting and stopping. Start the service with `systemctl start harbor-ledger`. Stop it with
`systemctl stop harbor-ledger`. The service writes its log to /var/log/harbor/ledger.log. A healthy
start ends with the line "ledger ready: replication in sync". If the log shows "replication lag"
for more than five minutes, call the duty engineer, Maria Okonkwo, on extension 4471.

4. Backups. A full backup runs every night at 02:30 with the command `harbor-ledger backup --full`.
Backups are written to /srv/backup/ledger and kept for thirty days. An incremental backup runs every
hour at minute 15. Before any upgrade, run a full backup by hand and check that the file
/srv/backup/ledger/LATEST names today's date.

5. Upgrades. Upgrade one server at a time, starting with ledger-c, then ledger-b, then ledger-a. Never
upgrade two servers in the same hour. After each upgrade, run `harbor-ledger check --deep` and wait
for the message "all shards verified" before moving on. The standby server ledger-d is upgraded last,
on the following day.

6. Customs status codes. The status field takes one of five values: CLEARED (customs has released the
container), HELD (customs wants to inspect it), PENDING (papers have been filed but not read),
REJECTED (papers were refused and must be filed again) and EXEMPT (the container needs no customs
check, for example empty containers returning to their owner). Only the customs office may change a
status from HELD to CLEARED.

7. Billing. The billing system reads the ledger every fifteen minutes. Storage is charged per day
from the first scan at the gate. The first three days are free. From the fourth day the charge is
42 euros per day for a twenty-foot container and 68 euros per day for a forty-foot container.
Containers with the status HELD are not charged while customs holds them.

8. Access. Gate clerks log in with their badge number and may read records and add scans. The customs
office may read records and change customs status. The billing system has a read-only account named
billing-reader. Administrators are Maria Okonkwo and Chen Wei; only they may delete a record, and every
deletion is written to /var/log/harbor/audit.log with the administrator's name.

9. Known problems. After a power cut, ledger-b sometimes starts before the disk array is mounted and
reports "data directory missing". Wait until the array is mounted, then restart the service. Queries
for vessel names that contain an apostrophe, such as "Queen's Pride", fail in version 4.1; version 4.2
fixes this. Large exports over 500,000 records should be run at night with
`harbor-ledger export --since 2024-01-01 --format csv`, because they slow down the gate queries.

10. Contacts. Duty engineer: Maria Okonkwo, extension 4471. Database specialist: Chen Wei, extension
4480. Customs liaison: Tomas Lindqvist, extension 4512. The vendor's support line is open on weekdays
from 08:00 to 18:00 and answers at support@harbor-ledger.example.
"""

CODE_FILE = '''\
import json
import os


def load_config(path):
    with open(path) as f:
        data = json.load(f)
    if "port" not in data:
        data["port"] = 7340
    if "data_dir" not in data:
        data["data_dir"] = "/var/lib/harbor/ledger"
    return data


def container_charge(days, size):
    free_days = 3
    if days <= free_days:
        return 0
    rate = 42 if size == 20 else 68
    return (days - free_days) * rate


def summarize(records):
    total = 0
    held = 0
    for record in records:
        total += container_charge(record["days"], record["size"])
        if record["status"] == "HELD":
            held += 1
    return {"total": total, "held": held, "count": len(records)}


def main():
    config = load_config(os.environ.get("LEDGER_CONFIG", "/etc/harbor/ledger.json"))
    with open(os.path.join(config["data_dir"], "records.json")) as f:
        records = json.load(f)
    print(json.dumps(summarize(records), indent=2))


if __name__ == "__main__":
    main()
'''

# (name, user message): answers that quote their prompt, where prompt lookup drafts well.
EXTRACTIVE = [
    ("question", DOCUMENT + "\nUsing only the handbook above, explain step by step how to upgrade the servers, "
                 "quoting the exact commands and server names."),
    ("quote-summarise", DOCUMENT + "\nQuote section 9 of the handbook word for word, then summarise it in two "
                        "sentences."),
    ("code-edit", CODE_FILE + "\nRewrite this whole Python file with type hints and a docstring on every "
                  "function. Keep everything else the same."),
]

# Open chat: answers that owe little to their prompt.
OPEN_CHAT = [
    ("story", "Write a short story about a lighthouse keeper who finds a message in a bottle."),
    ("advice", "What are some good habits for staying healthy while working from home?"),
    ("explain", "Explain how a refrigerator keeps food cold."),
]

CHINESE = [
    ("chinese", "请用中文介绍一下长城的历史，并说明它为什么有名。"),
]

# A prompt too short and plain for any n-gram of the answer to be found in it early on.
NO_MATCH = [("no-match", "Hi!")]

# (name, user message, output constraint as API fields): structured output, where the grammar forces
# keys and punctuation (drafted without a lookup) and the values quote the document.
HANDBOOK_FACTS = {"type": "object", "properties": {
    "config_file": {"type": "string", "maxLength": 60},
    "data_directory": {"type": "string", "maxLength": 60},
    "query_port": {"type": "integer"},
    "replication_port": {"type": "integer"},
    "start_command": {"type": "string", "maxLength": 60},
    "duty_engineer": {"type": "string", "maxLength": 40},
    "servers": {"type": "array", "items": {"type": "string", "maxLength": 20}, "maxItems": 4}},
    "required": ["config_file", "data_directory", "query_port", "replication_port", "start_command",
                 "duty_engineer", "servers"], "additionalProperties": False}
CONSTRAINED = [
    ("json-extract", DOCUMENT + "\nFrom the handbook above, give the configuration file, the data directory, the "
                     "two ports, the start command, the duty engineer and the four server names as JSON.",
     {"guided_json": HANDBOOK_FACTS}),
    ("regex-command", DOCUMENT + "\nWhich command starts a full backup? Answer with the command only.",
     {"guided_regex": r"harbor-ledger [a-z]+( --[a-z]+)*"}),
]
