#!/usr/bin/env python3
"""Writes deploy/quorate.rules.test.yml (promtool unit tests of quorate.rules.yml):
each case names the series it feeds and the alerts expected, and the expected
annotations are rendered from the rules themselves. Run from the repository root
after changing a rule or a case, then `make test` (promtool test rules) checks it."""
import yaml, re
rules = {r['alert']: r for g in yaml.safe_load(open('deploy/quorate.rules.yml'))['groups'] for r in g['rules']}
def L(**kw):
    d = {'job': 'quorate', 'instance': 'p1'}; d.update(kw); return d
def sel(name, labels):
    return name + '{' + ','.join(f'{k}="{v}"' for k, v in labels.items()) + '}'
def alert(name, labels):
    r = rules[name]
    lab = dict(labels); lab['severity'] = r['labels']['severity']
    ann = {k: re.sub(r'\{\{ \$labels\.(\w+) \}\}', lambda m: str(labels[m.group(1)]), v) for k, v in r['annotations'].items()}
    return {'exp_labels': lab, 'exp_annotations': ann}
tests = []
def test(comment, series, evals):
    tests.append({'name': comment, 'interval': '1m',
                  'input_series': [{'series': sel(n, l), 'values': v} for n, l, v in series],
                  'alert_rule_test': [{'eval_time': t, 'alertname': a, 'exp_alerts': [alert(a, l) for l in exp]} for t, a, exp in evals]})
p1 = L(); p2 = L(instance='p2')
test('a party that stops answering', [('up', p1, '1 1 0 0 0 0 0'), ('up', p2, '1x6')],
     [('3m', 'QuorateDown', []), ('5m', 'QuorateDown', [p1])])
test('no decision while work is pending; none while idle or deciding', [
    ('quorate_last_decision_timestamp_seconds', p1, '0x15'),
    ('quorate_outbox_operations', p1, '0 0 0 2x12'), ('quorate_pending_batches', p1, '0x15'),
    # p2: idle for as long, nothing pending.
    ('quorate_last_decision_timestamp_seconds', p2, '0x15'),
    ('quorate_outbox_operations', p2, '0x15'), ('quorate_pending_batches', p2, '0x15'),
    # p3: work pending but decisions keep coming (the timestamp follows time()).
    ('quorate_last_decision_timestamp_seconds', L(instance='p3'), '0+60x15'),
    ('quorate_outbox_operations', L(instance='p3'), '5x15'), ('quorate_pending_batches', L(instance='p3'), '1x15')],
    [('2m', 'QuorateNoDecisionWhileWorkPending', []), ('10m', 'QuorateNoDecisionWhileWorkPending', [p1])])
test('a stall seen through the consensus mempool alone', [
    ('quorate_last_decision_timestamp_seconds', p1, '0x10'),
    ('quorate_outbox_operations', p1, '0x10'), ('quorate_pending_batches', p1, '0 1x9')],
    [('8m', 'QuorateNoDecisionWhileWorkPending', [p1])])
test('an unattested peer, only where attestation is enforced', [
    ('quorate_peer_attested', L(peer='2'), '1x10'), ('quorate_peer_attested', L(peer='3'), '0x10'),
    ('quorate_attestation_enforced', p1, '1x10'),
    ('quorate_peer_attested', L(instance='p2', peer='3'), '0x10'), ('quorate_attestation_enforced', p2, '0x10')],
    [('3m', 'QuoratePeerUnattested', []), ('6m', 'QuoratePeerUnattested', [L(peer='3')])])
test('a disconnected peer', [('quorate_peer_connected', L(peer='2'), '1x10'), ('quorate_peer_connected', L(peer='3'), '1 0x9')],
     [('6m', 'QuoratePeerDisconnected', [L(peer='3')])])
test('a refused peer', [('quorate_peer_refusals_total', L(peer='2'), '0x20'), ('quorate_peer_refusals_total', L(peer='3'), '0 0 1x18')],
     [('1m', 'QuoratePeerRefused', []), ('3m', 'QuoratePeerRefused', [L(peer='3')]), ('19m', 'QuoratePeerRefused', [])])
test('a sign refusal', [('quorate_sign_refusals_total', p1, '0 0 0 1 1'), ('quorate_sign_refusals_total', p2, '0x4')],
     [('2m', 'QuorateSignRefused', []), ('4m', 'QuorateSignRefused', [p1])])
test('equivocation evidence', [('quorate_equivocation_evidence_total', L(party='3'), '0 0 1 1'), ('quorate_equivocation_evidence_total', L(party='2'), '0x3')],
     [('1m', 'QuorateEquivocation', []), ('3m', 'QuorateEquivocation', [L(party='3')])])
buckets = lambda inst, spread: [('quorate_tpm_sign_latency_seconds_bucket', L(instance=inst, le=le), v) for le, v in zip(['0.01', '0.5', '1', '2.5', '+Inf'], spread)]
test('slow TPM signatures (p1 over 1 s, p2 under 10 ms)',
     buckets('p1', ['0x20', '0x20', '0+1x20', '0+10x20', '0+10x20']) + buckets('p2', ['0+10x20'] * 5),
     [('5m', 'QuorateTpmSlow', []), ('15m', 'QuorateTpmSlow', [p1])])
test('TPM errors', [('quorate_tpm_errors_total', p1, '0 0 2 2'), ('quorate_tpm_errors_total', p2, '0x3')],
     [('3m', 'QuorateTpmErrors', [p1])])
test('a checkpoint waiting for a quorum', [('quorate_checkpoint_uncertified_seconds', p1, '0+100x8'), ('quorate_checkpoint_uncertified_seconds', p2, '0 5 0 5 0 5 0 5')],
     [('3m', 'QuorateCheckpointNotCertified', []), ('6m', 'QuorateCheckpointNotCertified', [p1])])
test('an audit log fork', [('quorate_checkpoint_forks_total', p1, '0 0 1'), ('quorate_checkpoint_forks_total', p2, '0x2')],
     [('2m', 'QuorateCheckpointNotCertified', []), ('2m', 'QuorateAuditLogFork', [p1])])
test('disk nearly full (p1 5% free) and full (p2 2% free)', [
    ('quorate_data_dir_free_bytes', p1, '5x20'), ('quorate_data_dir_size_bytes', p1, '100x20'),
    ('quorate_data_dir_free_bytes', p2, '2x20'), ('quorate_data_dir_size_bytes', p2, '100x20'),
    ('quorate_data_dir_free_bytes', L(instance='p3'), '50x20'), ('quorate_data_dir_size_bytes', L(instance='p3'), '100x20')],
    [('5m', 'QuorateDiskNearlyFull', []), ('12m', 'QuorateDiskNearlyFull', [p1, p2]), ('12m', 'QuorateDiskFull', [p2])])
test('a disk that fills within a day', [
    ('quorate_data_dir_free_bytes', p1, '100000-100x90'), ('quorate_data_dir_size_bytes', p1, '200000x90'),
    ('quorate_data_dir_free_bytes', p2, '100000x90'), ('quorate_data_dir_size_bytes', p2, '200000x90')],
    [('20m', 'QuorateDiskFillsWithinADay', []), ('60m', 'QuorateDiskFillsWithinADay', [p1])])
test('API server errors', [('quorate_api_requests_total', L(**{'class': '5xx'}), '0 0 1 1'), ('quorate_api_requests_total', L(**{'class': '2xx'}), '0+5x3')],
     [('3m', 'QuorateApiServerErrors', [L(**{'class': '5xx'})])])
out = {'rule_files': ['quorate.rules.yml'], 'evaluation_interval': '1m', 'tests': tests}
hdr = "# Unit tests of quorate.rules.yml: `promtool test rules deploy/quorate.rules.test.yml`\n# (run by `make test`). Each alert fires on the failure it names and not\n# on a healthy neighbour (another instance or label) in the same series.\n"
open('deploy/quorate.rules.test.yml', 'w').write(hdr + yaml.safe_dump(out, sort_keys=False, width=200))
