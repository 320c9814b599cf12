"""Least-privilege checks of the CloudFormation that template.yaml deploys as.

Usage: python scripts/check-policies.py [--self-test] TEMPLATE.json
       (TEMPLATE.json: the output of scripts/sam-translate.py; scripts/check-template.sh runs both)

Each check is named and prints PASS or FAIL with the offending statements; the last line is
"N passed, N failed" and the exit code is non-zero on any failure.

Why on the translated template: that is where SAM has merged Globals into each function and turned
`Policies` into the roles that are actually deployed, so a grant cannot hide in SAM sugar.

Intrinsics are resolved against a fixed fake stack (the parameters' defaults, us-east-1, account
123456789012), so a resource such as `!Sub '${StepsTable.Arn}/index/*'` or a bare '*' is matched
the way IAM would match it against the real table ARN: wildcards in Action and Resource count.
Conditions are not evaluated (a grant with a condition still counts as a grant), except where a
check is about the condition itself.

--self-test applies deliberately broken policies to the template, one at a time, and passes only if
the unchanged template passes every check and each broken one fails the check meant to catch it,
so a check that stopped seeing anything fails too.

Standard library only (runs with the sam venv's python).
"""

import copy
import json
import re
import sys

REGION = "us-east-1"
ACCOUNT = "123456789012"
PARTITION = "aws"

# Webhook signing secrets of clients (SPEC section 3: `rulestream/<client_id>/...`). The name is
# fixed, not `<prefix>/`.
SIGNING_SECRETS = f"arn:{PARTITION}:secretsmanager:{REGION}:{ACCOUNT}:secret:rulestream/*"
CLIENT_ROLES = f"arn:{PARTITION}:iam::*:role/rulestream-client-*"
CLIENT_TAG = "aws:PrincipalTag/rulestream-client"
LEADING_KEY_PATTERN = "${" + CLIENT_TAG + "}:*"

# What DynamoDB calls can change a table or its items (TransactWriteItems is authorised per item
# with these). Bulk reads: the ones that read a whole table.
DDB_WRITE = ["PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem", "PartiQLInsert",
             "PartiQLUpdate", "PartiQLDelete", "UpdateTable", "DeleteTable", "UpdateTimeToLive",
             "RestoreTableFromBackup", "ImportTable"]
DDB_DELETE = ["DeleteItem", "BatchWriteItem", "PartiQLDelete", "DeleteTable"]
DDB_BULK_READ = ["Scan", "PartiQLSelect", "ExportTableToPointInTime"]
SECRETS_WRITE = ["PutSecretValue", "UpdateSecret", "DeleteSecret", "CreateSecret", "RotateSecret",
                 "RestoreSecret", "PutResourcePolicy", "UpdateSecretVersionStage",
                 "ReplicateSecretToRegions", "TagResource"]

MANAGED_ALLOWED = {
    "orchestrator": {
        "arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole",
        "arn:aws:iam::aws:policy/AWSXrayWriteOnlyAccess",
        "arn:aws:iam::aws:policy/service-role/AWSLambdaVPCAccessExecutionRole",
        # Added by SAM for the DynamoDB stream event.
        "arn:aws:iam::aws:policy/service-role/AWSLambdaDynamoDBExecutionRole",
    },
    "sweeper": {
        "arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole",
        "arn:aws:iam::aws:policy/AWSXrayWriteOnlyAccess",
        "arn:aws:iam::aws:policy/service-role/AWSLambdaVPCAccessExecutionRole",
    },
    "release-bridge": {
        "arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole",
        "arn:aws:iam::aws:policy/AWSXrayWriteOnlyAccess",
        "arn:aws:iam::aws:policy/service-role/AWSLambdaVPCAccessExecutionRole",
        # ENIs in the cluster's VPC and kafka:Describe*/GetBootstrapBrokers for the MSK mapping.
        "arn:aws:iam::aws:policy/service-role/AWSLambdaMSKExecutionRole",
    },
    "sync-api": {
        "arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole",
        "arn:aws:iam::aws:policy/AWSXrayWriteOnlyAccess",
        "arn:aws:iam::aws:policy/service-role/AWSLambdaVPCAccessExecutionRole",
    },
}

FUNCTIONS = ("orchestrator", "sweeper", "sync-api", "release-bridge")


class Unresolved(Exception):
    pass


def glob_match(pattern, value, case_insensitive=False):
    """IAM wildcard match: `*` any run of characters, `?` one character."""
    rx = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(rx, value, re.I | re.S if case_insensitive else re.S) is not None


def as_list(v):
    if v is None:
        return []
    return v if isinstance(v, list) else [v]


class Stack:
    """The translated template with intrinsics resolved against a fake deployment."""

    def __init__(self, template):
        self.t = template
        self.res = template.get("Resources") or {}
        self.params = {}
        for name, p in (template.get("Parameters") or {}).items():
            if "Default" in p:
                d = p["Default"]
                self.params[name] = ",".join(map(str, d)) if isinstance(d, list) else str(d)
        # Parameters without a default get the value a deployment would pass.
        self.params.setdefault(
            "MskClusterArn", f"arn:{PARTITION}:kafka:{REGION}:{ACCOUNT}:cluster/rulestream/abcd-1234")
        self.prefix = self.params.get("Prefix", "rulestream")
        self.pseudo = {
            "AWS::Region": REGION, "AWS::AccountId": ACCOUNT, "AWS::Partition": PARTITION,
            "AWS::StackName": "stack", "AWS::URLSuffix": "amazonaws.com",
        }

    # --- intrinsics ---------------------------------------------------------------------------
    def render(self, v):
        if isinstance(v, (str, int, float, bool)) or v is None:
            return v
        if isinstance(v, list):
            return [self.render(x) for x in v]
        if isinstance(v, dict) and len(v) == 1:
            (k, a), = v.items()
            if k == "Ref":
                return self.ref(a)
            if k == "Fn::GetAtt":
                rid, attr = a.split(".", 1) if isinstance(a, str) else a
                return self.getatt(rid, attr)
            if k == "Fn::Sub":
                text, variables = (a, {}) if isinstance(a, str) else a
                return self.sub(text, variables)
            if k == "Fn::Join":
                return a[0].join(str(self.render(x)) for x in self.render_list(a[1]))
            if k == "Fn::Select":
                return self.render_list(a[1])[int(self.render(a[0]))]
            if k == "Fn::Split":
                return str(self.render(a[1])).split(a[0])
            if k.startswith("Fn::") or k == "Condition":
                raise Unresolved(f"{k} is not supported by check-policies.py: {json.dumps(v)}")
        if isinstance(v, dict):
            return {k: self.render(x) for k, x in v.items()}
        raise Unresolved(json.dumps(v))

    def render_list(self, v):
        r = self.render(v)
        return r if isinstance(r, list) else [r]

    def sub(self, text, variables):
        def one(m):
            name = m.group(1)
            if name.startswith("!"):
                return "${" + name[1:] + "}"
            if name in variables:
                return str(self.render(variables[name]))
            if "." in name and name.split(".", 1)[0] in self.res:
                rid, attr = name.split(".", 1)
                return str(self.getatt(rid, attr))
            return str(self.ref(name))
        return re.sub(r"\$\{([^}]*)\}", one, text)

    def ref(self, name):
        if name in self.pseudo:
            return self.pseudo[name]
        if name in self.params:
            return self.params[name]
        if name not in self.res:
            raise Unresolved(f"Ref to unknown {name}")
        typ = self.res[name]["Type"]
        n = self.name_of(name)
        return {
            "AWS::SecretsManager::Secret": f"arn:{PARTITION}:secretsmanager:{REGION}:{ACCOUNT}:secret:{n}-AbCdEf",
            "AWS::SQS::Queue": f"https://sqs.{REGION}.amazonaws.com/{ACCOUNT}/{n}",
            "AWS::IAM::ManagedPolicy": f"arn:{PARTITION}:iam::{ACCOUNT}:policy/{n}",
        }.get(typ, n)

    def getatt(self, rid, attr):
        if rid not in self.res:
            raise Unresolved(f"GetAtt of unknown {rid}.{attr}")
        typ, n = self.res[rid]["Type"], self.name_of(rid)
        table = f"arn:{PARTITION}:dynamodb:{REGION}:{ACCOUNT}:table/{n}"
        known = {
            ("AWS::DynamoDB::Table", "Arn"): table,
            ("AWS::DynamoDB::Table", "StreamArn"): f"{table}/stream/2000-01-01T00:00:00.000",
            ("AWS::SQS::Queue", "Arn"): f"arn:{PARTITION}:sqs:{REGION}:{ACCOUNT}:{n}",
            ("AWS::S3::Bucket", "Arn"): f"arn:{PARTITION}:s3:::{n}",
            ("AWS::IAM::Role", "Arn"): f"arn:{PARTITION}:iam::{ACCOUNT}:role/{n}",
            ("AWS::Lambda::Function", "Arn"): f"arn:{PARTITION}:lambda:{REGION}:{ACCOUNT}:function:{n}",
            ("AWS::ElastiCache::ReplicationGroup", "PrimaryEndPoint.Address"): f"{n}.cache.amazonaws.com",
            ("AWS::ElastiCache::ReplicationGroup", "PrimaryEndPoint.Port"): "6379",
        }
        return known.get((typ, attr), f"<{rid}.{attr}>")

    def name_of(self, rid):
        props = self.res[rid].get("Properties") or {}
        for key in ("TableName", "Name", "QueueName", "BucketName", "ManagedPolicyName",
                    "RoleName", "FunctionName", "ReplicationGroupId"):
            if key in props:
                return str(self.render(props[key]))
        return rid

    # --- lookups --------------------------------------------------------------------------------
    def props(self, rid):
        return self.res[rid].get("Properties") or {}

    def find(self, typ, name):
        for rid, r in self.res.items():
            if r.get("Type") == typ and self.name_of(rid) == name:
                return rid
        raise Unresolved(f"no {typ} named {name!r} in the template")

    def table(self, suffix):
        return self.find("AWS::DynamoDB::Table", f"{self.prefix}-{suffix}")

    def table_arn(self, suffix):
        return self.getatt(self.table(suffix), "Arn")

    def table_targets(self, suffix):
        """The table ARN and the ARNs of its indexes (declared ones and any other)."""
        rid = self.table(suffix)
        arn = self.getatt(rid, "Arn")
        gsis = [g["IndexName"] for g in self.props(rid).get("GlobalSecondaryIndexes") or []]
        return [arn] + [f"{arn}/index/{g}" for g in gsis] + [f"{arn}/index/any-other-index"]

    def secret_arn(self, suffix):
        return self.ref(self.find("AWS::SecretsManager::Secret", f"{self.prefix}-system/{suffix}"))

    def function(self, short):
        return self.find("AWS::Lambda::Function", f"{self.prefix}-{short}")

    def role_of(self, short):
        role = self.props(self.function(short)).get("Role")
        if not (isinstance(role, dict) and "Fn::GetAtt" in role):
            raise Unresolved(f"the {short} function's Role is not a GetAtt of a role in the template")
        a = role["Fn::GetAtt"]
        return a.split(".", 1)[0] if isinstance(a, str) else a[0]

    def env_of(self, short):
        env = (self.props(self.function(short)).get("Environment") or {}).get("Variables") or {}
        return {k: self.render(v) for k, v in env.items()}

    def statements_of_role(self, role_id):
        """Identity-policy statements that apply to a role (not its trust policy)."""
        out = []
        for i, pol in enumerate(self.props(role_id).get("Policies") or []):
            out += self.statements(pol.get("PolicyDocument"), f"{role_id}/{pol.get('PolicyName', i)}")
        for rid, r in self.res.items():
            if r.get("Type") in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
                roles = [x.get("Ref") if isinstance(x, dict) else x for x in self.props(rid).get("Roles") or []]
                if role_id in roles:
                    out += self.statements(self.props(rid).get("PolicyDocument"), rid)
        return out

    def statements(self, doc, source):
        out = []
        for i, s in enumerate(as_list((doc or {}).get("Statement"))):
            out.append(Statement(self, s, f"{source}#{s.get('Sid', i)}"))
        return out

    def all_policy_statements(self):
        """Every identity-policy statement in the template: roles' inline policies and
        AWS::IAM::Policy / ManagedPolicy documents."""
        out = []
        for rid, r in self.res.items():
            if r.get("Type") == "AWS::IAM::Role":
                for i, pol in enumerate(self.props(rid).get("Policies") or []):
                    out += self.statements(pol.get("PolicyDocument"), f"{rid}/{pol.get('PolicyName', i)}")
            elif r.get("Type") in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
                out += self.statements(self.props(rid).get("PolicyDocument"), rid)
        return out


class Statement:
    def __init__(self, stack, raw, source):
        self.raw, self.source = raw, source
        self.effect = raw.get("Effect")
        self.not_action = "NotAction" in raw
        self.actions = [str(a) for a in as_list(raw.get("NotAction" if self.not_action else "Action"))]
        self.not_resource = "NotResource" in raw
        self.resources = [str(r) for r in stack.render_list(raw.get("NotResource" if self.not_resource else "Resource"))]
        self.condition = stack.render(raw.get("Condition") or {})

    def grants(self, action, resource=None):
        if self.effect != "Allow":
            return False
        hit = any(glob_match(p, action, case_insensitive=True) for p in self.actions)
        if hit == self.not_action:
            return False
        if resource is None:
            return True
        hit = any(glob_match(p, resource) for p in self.resources)
        return hit != self.not_resource

    def __str__(self):
        return f"{self.source} ({', '.join(self.actions)} on {', '.join(self.resources)})"


def grants(statements, actions, resources):
    """Problems: one line per (statement, action, resource) that is allowed."""
    out = []
    for s in statements:
        for a in actions:
            for r in resources:
                if s.grants(a, r):
                    out.append(f"{s.source} allows {a} on {r}")
    return out


def ddb(names):
    return [f"dynamodb:{n}" for n in names]


# ----------------------------------------------------------------------------------------------
# Checks: each returns a list of problems (empty: pass).
# ----------------------------------------------------------------------------------------------
CHECKS = []


def check(name, what):
    def deco(fn):
        CHECKS.append((name, what, fn))
        return fn
    return deco


@check("orchestrator-no-write-clients-catalog",
       "the orchestrator role cannot write the clients or catalog table (or their indexes)")
def _(st):
    sts = st.statements_of_role(st.role_of("orchestrator"))
    return grants(sts, ddb(DDB_WRITE), st.table_targets("clients") + st.table_targets("catalog"))


@check("no-scan-steps-executions",
       "neither function can Scan (or bulk-read) the steps, executions or trigger table")
def _(st):
    targets = st.table_targets("steps") + st.table_targets("executions") + st.table_targets("trigger")
    out = []
    for fn in FUNCTIONS:
        out += grants(st.statements_of_role(st.role_of(fn)), ddb(DDB_BULK_READ), targets)
    return out


@check("audit-append-only",
       "the audit table is append-only: no function may update or delete its items")
def _(st):
    out = []
    for fn in FUNCTIONS:
        out += grants(st.statements_of_role(st.role_of(fn)),
                      ddb([a for a in DDB_WRITE if a != "PutItem"]), st.table_targets("audit"))
    return out


@check("bridge-no-chain-writes",
       "the release bridge cannot write the trigger, steps or executions table (it never runs rules)")
def _(st):
    targets = st.table_targets("trigger") + st.table_targets("steps") + st.table_targets("executions")
    return grants(st.statements_of_role(st.role_of("release-bridge")), ddb(DDB_WRITE), targets)


@check("no-item-deletes", "neither function can delete items or tables (TTL expires them)")
def _(st):
    targets = sum((st.table_targets(t) for t in ("trigger", "steps", "executions", "clients", "catalog", "audit")), [])
    out = []
    for fn in FUNCTIONS:
        out += grants(st.statements_of_role(st.role_of(fn)), ddb(DDB_DELETE), targets)
    return out


@check("secrets-allowed-shapes",
       "GetSecretValue only on the state key, the Redis token and rulestream/* (never '*'); "
       "no secret writes")
def _(st):
    allowed = {st.secret_arn("state-key"), st.secret_arn("redis-auth"), SIGNING_SECRETS}
    out = []
    for s in st.all_policy_statements():
        if s.grants("secretsmanager:GetSecretValue"):
            if s.not_resource:
                out.append(f"{s.source} grants GetSecretValue with NotResource")
            for r in s.resources:
                if r not in allowed:
                    out.append(f"{s.source} grants GetSecretValue on {r!r} "
                               f"(allowed: {', '.join(sorted(allowed))})")
        for a in SECRETS_WRITE:
            if s.grants(f"secretsmanager:{a}"):
                out.append(f"{s.source} allows secretsmanager:{a}")
    return out


@check("sts-assume-client-roles-only",
       "sts:AssumeRole only on rulestream-client-* roles, only by the functions that run steps "
       "(the orchestrator, the sync API's inline mode), with an ExternalId required")
def _(st):
    out = []
    orch_sources = {s.source for fn in ("orchestrator", "sync-api")
                    for s in st.statements_of_role(st.role_of(fn))}
    for s in st.all_policy_statements():
        if not s.grants("sts:AssumeRole"):
            continue
        if s.source not in orch_sources:
            out.append(f"{s.source} grants sts:AssumeRole outside the orchestrator's role")
        if s.not_resource or s.resources != [CLIENT_ROLES]:
            out.append(f"{s.source} grants sts:AssumeRole on {s.resources} (allowed: [{CLIENT_ROLES!r}])")
        external = [op for op, kv in s.condition.items() if "sts:ExternalId" in kv]
        if not external:
            out.append(f"{s.source} grants sts:AssumeRole without a condition on sts:ExternalId")
    return out


@check("client-writer-put-only",
       "the client writer policy allows only PutItem on the trigger table, under the caller's "
       "rulestream-client tag as leading key")
def _(st):
    rid = st.find("AWS::IAM::ManagedPolicy", f"{st.prefix}-client-writer")
    sts = st.statements(st.props(rid).get("PolicyDocument"), rid)
    trigger = st.table_arn("trigger")
    out = []
    if not sts:
        out.append(f"{rid} has no statements")
    for s in sts:
        if s.effect != "Allow":
            continue  # a Deny only narrows it
        if s.not_action or s.not_resource:
            out.append(f"{s.source} uses NotAction/NotResource")
        if [a.lower() for a in s.actions] != ["dynamodb:putitem"]:
            out.append(f"{s.source} allows {s.actions} (only dynamodb:PutItem)")
        if s.resources != [trigger]:
            out.append(f"{s.source} applies to {s.resources} (only {trigger})")
        keys = (s.condition.get("ForAllValues:StringLike") or {}).get("dynamodb:LeadingKeys")
        if as_list(keys) != [LEADING_KEY_PATTERN]:
            out.append(f"{s.source} lacks ForAllValues:StringLike dynamodb:LeadingKeys = "
                       f"[{LEADING_KEY_PATTERN!r}] (has {keys!r})")
    return out


@check("sweeper-no-trigger-write",
       "the sweeper cannot write the trigger table (it never starts or continues a chain)")
def _(st):
    return grants(st.statements_of_role(st.role_of("sweeper")), ddb(DDB_WRITE), st.table_targets("trigger"))


@check("sweeper-no-client-roles-or-rules",
       "the sweeper cannot assume client roles, invoke rule functions or write clients/catalog")
def _(st):
    sts = st.statements_of_role(st.role_of("sweeper"))
    out = grants(sts, ["sts:AssumeRole"], [f"arn:{PARTITION}:iam::210987654321:role/rulestream-client-x"])
    out += grants(sts, ["lambda:InvokeFunction"],
                  [f"arn:{PARTITION}:lambda:{REGION}:{ACCOUNT}:function:rulestream-rule-x"])
    out += grants(sts, ddb(DDB_WRITE), st.table_targets("clients") + st.table_targets("catalog"))
    return out


@check("no-wildcard-grants",
       "inline policies of the functions name actions and resources: no '*', 'service:*', "
       "NotAction or NotResource")
def _(st):
    out = []
    for fn in FUNCTIONS:
        for s in st.statements_of_role(st.role_of(fn)):
            if s.effect != "Allow":
                continue
            if s.not_action or s.not_resource:
                out.append(f"{s.source} uses NotAction/NotResource")
            out += [f"{s.source} allows action {a!r}" for a in s.actions if a == "*" or a.endswith(":*")]
            out += [f"{s.source} applies to resource '*'" for r in s.resources if r == "*"]
    return out


@check("function-roles-managed-policies",
       "the functions' roles attach only the expected AWS managed policies")
def _(st):
    out = []
    for fn, allowed in MANAGED_ALLOWED.items():
        role = st.role_of(fn)
        for arn in st.render_list(st.props(role).get("ManagedPolicyArns") or []):
            if arn not in allowed:
                out.append(f"{role} attaches {arn}")
    return out


@check("required-grants",
       "the functions keep what they need (least privilege must not break them)")
def _(st):
    need = {
        "orchestrator": [
            ("dynamodb:PutItem", st.table_arn("trigger")),
            ("dynamodb:GetItem", st.table_arn("trigger")),
            ("dynamodb:PutItem", st.table_arn("steps")),
            ("dynamodb:UpdateItem", st.table_arn("steps")),
            ("dynamodb:Query", st.table_arn("steps")),
            ("dynamodb:PutItem", st.table_arn("executions")),
            ("dynamodb:UpdateItem", st.table_arn("executions")),
            ("dynamodb:GetItem", st.table_arn("clients")),
            ("dynamodb:Query", st.table_arn("catalog")),
            ("s3:GetObject", f"{st.getatt(st.find('AWS::S3::Bucket', st.prefix + '-configs'), 'Arn')}/flows/c/f/v1.json"),
            ("secretsmanager:GetSecretValue", st.secret_arn("state-key")),
            ("secretsmanager:GetSecretValue", st.secret_arn("redis-auth")),
            ("secretsmanager:GetSecretValue", SIGNING_SECRETS.replace("*", "acme/webhook-AbCdEf")),
            ("sts:AssumeRole", f"arn:{PARTITION}:iam::210987654321:role/rulestream-client-acme"),
            ("sqs:SendMessage", st.getatt(st.find("AWS::SQS::Queue", st.prefix + "-orchestrator-dlq"), "Arn")),
        ],
        "sync-api": [
            ("dynamodb:PutItem", st.table_arn("trigger")),
            ("dynamodb:PutItem", st.table_arn("steps")),
            ("dynamodb:Query", st.table_arn("steps")),
            ("dynamodb:UpdateItem", st.table_arn("executions")),
            ("dynamodb:Query", f"{st.table_arn('executions')}/index/by-client"),
            ("dynamodb:Scan", st.table_arn("clients")),
            ("secretsmanager:GetSecretValue", st.secret_arn("state-key")),
            ("secretsmanager:GetSecretValue", st.secret_arn("redis-auth")),
        ],
        "sweeper": [
            ("dynamodb:Query", f"{st.table_arn('steps')}/index/pending"),
            ("dynamodb:UpdateItem", st.table_arn("steps")),
            ("dynamodb:Query", st.table_arn("steps")),
            # Ending an execution: the stop marker step, and a FAILED summary for a seq 0
            # record given up before it had one; that record's row is looked up first.
            ("dynamodb:PutItem", st.table_arn("steps")),
            ("dynamodb:PutItem", st.table_arn("executions")),
            ("dynamodb:GetItem", st.table_arn("executions")),
            ("dynamodb:GetItem", st.table_arn("trigger")),
            ("dynamodb:Query", f"{st.table_arn('executions')}/index/running"),
            ("dynamodb:UpdateItem", st.table_arn("executions")),
            ("secretsmanager:GetSecretValue", SIGNING_SECRETS.replace("*", "acme/webhook-AbCdEf")),
            ("secretsmanager:GetSecretValue", st.secret_arn("redis-auth")),
            ("sqs:ReceiveMessage", st.getatt(st.find("AWS::SQS::Queue", st.prefix + "-orchestrator-dlq"), "Arn")),
            ("sqs:DeleteMessage", st.getatt(st.find("AWS::SQS::Queue", st.prefix + "-orchestrator-dlq"), "Arn")),
        ],
    }
    out = []
    for fn, pairs in need.items():
        sts = st.statements_of_role(st.role_of(fn))
        out += [f"{fn} lacks {a} on {r}" for a, r in pairs if not any(s.grants(a, r) for s in sts)]
    return out


@check("secret-env-readable",
       "every secret a function is pointed at (RULESTREAM_STATE_KEY_SECRET, REDIS_AUTH_SECRET) "
       "exists in the template and the function's role can read it")
def _(st):
    out = []
    pointed = {"orchestrator": ("RULESTREAM_STATE_KEY_SECRET", "REDIS_AUTH_SECRET"),
               "sweeper": ("REDIS_AUTH_SECRET",),
               "sync-api": ("RULESTREAM_STATE_KEY_SECRET", "REDIS_AUTH_SECRET"),
               "release-bridge": ("REDIS_AUTH_SECRET",)}
    for fn, variables in pointed.items():
        env = st.env_of(fn)
        sts = st.statements_of_role(st.role_of(fn))
        for var in variables:
            if var not in env:
                out.append(f"{fn} has no {var}")
                continue
            try:
                arn = st.ref(st.find("AWS::SecretsManager::Secret", env[var]))
            except Unresolved as e:
                out.append(f"{fn} {var}={env[var]!r}: {e}")
                continue
            if not any(s.grants("secretsmanager:GetSecretValue", arn) for s in sts):
                out.append(f"{fn} {var}={env[var]!r} but its role cannot GetSecretValue on {arn}")
    return out


@check("redis-tls-auth",
       "Redis has transit and at-rest encryption and an AUTH token from the redis-auth secret; "
       "the functions connect with rediss://")
def _(st):
    rg = [rid for rid, r in st.res.items() if r.get("Type") == "AWS::ElastiCache::ReplicationGroup"]
    out = [] if rg else ["no AWS::ElastiCache::ReplicationGroup"]
    expected_token = "{{resolve:secretsmanager:" + st.secret_arn("redis-auth") + ":SecretString}}"
    for rid in rg:
        p = st.props(rid)
        for key in ("TransitEncryptionEnabled", "AtRestEncryptionEnabled"):
            if str(st.render(p.get(key))).lower() != "true":
                out.append(f"{rid}.{key} is {p.get(key)!r}, not true")
        token = st.render(p.get("AuthToken"))
        if token != expected_token:
            out.append(f"{rid}.AuthToken is {token!r}, not {expected_token!r}")
    for fn in FUNCTIONS:
        url = str(st.env_of(fn).get("REDIS_URL"))
        if not url.startswith("rediss://"):
            out.append(f"{fn} REDIS_URL is {url!r}, not rediss://")
    return out


@check("tables-ttl", "trigger, steps and executions expire through TTL on expires_at")
def _(st):
    out = []
    for t in ("trigger", "steps", "executions"):
        ttl = st.render(st.props(st.table(t)).get("TimeToLiveSpecification") or {})
        if ttl.get("AttributeName") != "expires_at" or str(ttl.get("Enabled")).lower() != "true":
            out.append(f"{st.prefix}-{t} TimeToLiveSpecification is {ttl!r}")
    return out


@check("tables-indexes", "the GSIs the functions query exist with the design's keys")
def _(st):
    want = {
        "steps": {"pending": [("pending_shard", "HASH", "S"), ("pending_due", "RANGE", "N")]},
        "executions": {"by-client": [("client_id", "HASH", "S"), ("started_at", "RANGE", "S")],
                       "running": [("running_shard", "HASH", "S"), ("started_at", "RANGE", "S")]},
    }
    out = []
    for t, indexes in want.items():
        p = st.props(st.table(t))
        types = {a["AttributeName"]: a["AttributeType"] for a in p.get("AttributeDefinitions") or []}
        have = {g["IndexName"]: g for g in p.get("GlobalSecondaryIndexes") or []}
        for name, keys in indexes.items():
            g = have.get(name)
            if g is None:
                out.append(f"{st.prefix}-{t} has no GSI {name!r}")
                continue
            got = [(k["AttributeName"], k["KeyType"], types.get(k["AttributeName"])) for k in g["KeySchema"]]
            if got != keys:
                out.append(f"{st.prefix}-{t} GSI {name!r} keys {got}, want {keys}")
            if (g.get("Projection") or {}).get("ProjectionType") != "ALL":
                out.append(f"{st.prefix}-{t} GSI {name!r} projection is not ALL")
    return out


def run_checks(template, quiet=False):
    """Returns {check name: problems}."""
    st = Stack(template)
    results = {}
    for name, what, fn in CHECKS:
        try:
            problems = fn(st)
        except (Unresolved, KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
            problems = [f"could not evaluate: {type(e).__name__}: {e}"]
        results[name] = problems
        if not quiet:
            print(f"{'PASS' if not problems else 'FAIL'} {name}: {what}")
            for p in problems:
                print(f"    - {p}")
    return results


# ----------------------------------------------------------------------------------------------
# Self-test: deliberately broken templates, each must fail the named check(s).
# ----------------------------------------------------------------------------------------------
def _role_policy(t, fn_id):
    role = t["Resources"][fn_id]["Properties"]["Role"]["Fn::GetAtt"][0]
    return t["Resources"][role]["Properties"]


def _add_statement(fn_id, stmt):
    def mutate(t):
        _role_policy(t, fn_id)["Policies"][-1]["PolicyDocument"]["Statement"].append(stmt)
    return mutate


def _writer_statement(t):
    for r in t["Resources"].values():
        if r["Type"] == "AWS::IAM::ManagedPolicy":
            return r["Properties"]["PolicyDocument"]["Statement"][0]
    raise KeyError("no AWS::IAM::ManagedPolicy")


def _redis(t):
    return next(r["Properties"] for r in t["Resources"].values()
                if r["Type"] == "AWS::ElastiCache::ReplicationGroup")


def _drop_sid(fn_id, sid):
    def mutate(t):
        doc = _role_policy(t, fn_id)["Policies"][-1]["PolicyDocument"]
        doc["Statement"] = [s for s in doc["Statement"] if s.get("Sid") != sid]
    return mutate


def _set(getter, key, value):
    def mutate(t):
        target = getter(t)
        if value is None:
            target.pop(key, None)
        else:
            target[key] = value
    return mutate


def _table(logical_id):
    return lambda t: t["Resources"][logical_id]["Properties"]


ORCH, SWEEP, API, BRIDGE = ("OrchestratorFunction", "SweeperFunction", "SyncApiFunction",
                            "ReleaseBridgeFunction")
MUTATIONS = [
    ("sync-api Scan on the executions table",
     _add_statement(API, {"Effect": "Allow", "Action": "dynamodb:Scan",
                          "Resource": {"Fn::GetAtt": ["ExecutionsTable", "Arn"]}}),
     ["no-scan-steps-executions"]),
    ("sync-api without its listing index",
     lambda t: next(s for s in _role_policy(t, API)["Policies"][-1]["PolicyDocument"]["Statement"]
                    if s.get("Sid") == "ExecutionsReadWrite").__setitem__(
         "Resource", {"Fn::GetAtt": ["ExecutionsTable", "Arn"]}),
     ["required-grants"]),
    ("orchestrator PutItem on the clients table",
     _add_statement(ORCH, {"Effect": "Allow", "Action": "dynamodb:PutItem",
                           "Resource": {"Fn::GetAtt": ["ClientsTable", "Arn"]}}),
     ["orchestrator-no-write-clients-catalog"]),
    ("orchestrator dynamodb:* on *",
     _add_statement(ORCH, {"Effect": "Allow", "Action": "dynamodb:*", "Resource": "*"}),
     ["orchestrator-no-write-clients-catalog", "no-scan-steps-executions", "no-wildcard-grants"]),
    ("sweeper Scan on the steps indexes",
     _add_statement(SWEEP, {"Effect": "Allow", "Action": ["dynamodb:Scan"],
                            "Resource": {"Fn::Sub": "${StepsTable.Arn}/index/*"}}),
     ["no-scan-steps-executions"]),
    ("orchestrator GetSecretValue on *",
     _add_statement(ORCH, {"Effect": "Allow", "Action": "secretsmanager:GetSecretValue", "Resource": "*"}),
     ["secrets-allowed-shapes"]),
    ("sweeper secretsmanager:* on the signing secrets",
     _add_statement(SWEEP, {"Effect": "Allow", "Action": "secretsmanager:*", "Resource": {
         "Fn::Sub": "arn:${AWS::Partition}:secretsmanager:${AWS::Region}:${AWS::AccountId}:secret:rulestream/*"}}),
     ["secrets-allowed-shapes", "no-wildcard-grants"]),
    ("orchestrator sts:AssumeRole on any role",
     _add_statement(ORCH, {"Effect": "Allow", "Action": "sts:AssumeRole",
                           "Resource": "arn:aws:iam::*:role/*"}),
     ["sts-assume-client-roles-only"]),
    ("AssumeRole without the ExternalId condition",
     lambda t: next(s for s in _role_policy(t, ORCH)["Policies"][-1]["PolicyDocument"]["Statement"]
                    if s.get("Sid") == "AssumeClientDataRoles").pop("Condition"),
     ["sts-assume-client-roles-only"]),
    ("client writer without the LeadingKeys condition",
     lambda t: _writer_statement(t).pop("Condition"),
     ["client-writer-put-only"]),
    ("client writer with dynamodb:*",
     lambda t: _writer_statement(t).__setitem__("Action", "dynamodb:*"),
     ["client-writer-put-only"]),
    ("client writer on the executions table too",
     lambda t: _writer_statement(t).__setitem__("Resource", [
         {"Fn::GetAtt": ["TriggerTable", "Arn"]}, {"Fn::GetAtt": ["ExecutionsTable", "Arn"]}]),
     ["client-writer-put-only"]),
    ("sweeper PutItem on the trigger table",
     _add_statement(SWEEP, {"Effect": "Allow", "Action": "dynamodb:PutItem",
                            "Resource": {"Fn::GetAtt": ["TriggerTable", "Arn"]}}),
     ["sweeper-no-trigger-write"]),
    ("sweeper may invoke rule functions",
     _add_statement(SWEEP, {"Effect": "Allow", "Action": "lambda:InvokeFunction", "Resource": {
         "Fn::Sub": "arn:${AWS::Partition}:lambda:${AWS::Region}:${AWS::AccountId}:function:rulestream-rule-*"}}),
     ["sweeper-no-client-roles-or-rules"]),
    ("orchestrator DeleteItem on the steps table",
     _add_statement(ORCH, {"Effect": "Allow", "Action": "dynamodb:DeleteItem",
                           "Resource": {"Fn::GetAtt": ["StepsTable", "Arn"]}}),
     ["no-item-deletes"]),
    ("orchestrator with AmazonDynamoDBFullAccess",
     lambda t: _role_policy(t, ORCH)["ManagedPolicyArns"].append(
         "arn:aws:iam::aws:policy/AmazonDynamoDBFullAccess"),
     ["function-roles-managed-policies"]),
    ("sweeper without its secrets statement",
     _drop_sid(SWEEP, "ReadSecrets"),
     ["secret-env-readable", "required-grants"]),
    ("orchestrator without steps access",
     _drop_sid(ORCH, "StepsReadWrite"),
     ["required-grants"]),
    ("release bridge UpdateItem on the audit table",
     _add_statement(BRIDGE, {"Effect": "Allow", "Action": "dynamodb:UpdateItem",
                             "Resource": {"Fn::GetAtt": ["AuditTable", "Arn"]}}),
     ["audit-append-only"]),
    ("release bridge PutItem on the trigger table",
     _add_statement(BRIDGE, {"Effect": "Allow", "Action": "dynamodb:PutItem",
                             "Resource": {"Fn::GetAtt": ["TriggerTable", "Arn"]}}),
     ["bridge-no-chain-writes"]),
    ("Redis without transit encryption", _set(_redis, "TransitEncryptionEnabled", False), ["redis-tls-auth"]),
    ("Redis without an AUTH token", _set(_redis, "AuthToken", None), ["redis-tls-auth"]),
    ("Redis with a literal AUTH token", _set(_redis, "AuthToken", "x" * 32), ["redis-tls-auth"]),
    ("steps table without TTL", _set(_table("StepsTable"), "TimeToLiveSpecification", None), ["tables-ttl"]),
    ("executions table without GSIs",
     _set(_table("ExecutionsTable"), "GlobalSecondaryIndexes", None), ["tables-indexes"]),
]


def self_test(template):
    passed = failed = 0
    base = run_checks(template, quiet=True)
    bad = {k: v for k, v in base.items() if v}
    if bad:
        print(f"FAIL baseline: the unchanged template already fails {', '.join(bad)} "
              "(run without --self-test for details)")
        failed += 1
    else:
        print("PASS baseline: the unchanged template passes every check")
        passed += 1
    for what, mutate, expected in MUTATIONS:
        t = copy.deepcopy(template)
        try:
            mutate(t)
        except (KeyError, IndexError, TypeError, StopIteration) as e:
            print(f"FAIL broken: {what}: could not apply it ({type(e).__name__}: {e}); "
                  "update MUTATIONS to the template's logical ids")
            failed += 1
            continue
        results = run_checks(t, quiet=True)
        missed = [name for name in expected if not results.get(name)]
        if missed:
            print(f"FAIL broken: {what}: not caught by {', '.join(missed)}")
            failed += 1
        else:
            print(f"PASS broken: {what}: caught by {', '.join(expected)}")
            passed += 1
    return passed, failed


def main(argv):
    args = argv[1:]
    selftest = "--self-test" in args
    args = [a for a in args if a != "--self-test"]
    if len(args) != 1:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    with open(args[0], encoding="utf-8") as f:
        template = json.load(f)
    if selftest:
        passed, failed = self_test(template)
    else:
        results = run_checks(template)
        failed = sum(1 for v in results.values() if v)
        passed = len(results) - failed
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
