// The dashboard of `discovered`: a read-only, live view of the registry.
//
// How it stays current: it opens the event stream (/api/events) first and,
// once the server says `ready` (it is listening to changes), loads the whole
// registry (/api/registry). Events that arrive while that load is in flight
// are held back and replayed on top of it, so no change falls in a gap.
// After that every node_* / service_* event is applied to the page in place.
//
// The stream is read with fetch() rather than EventSource because a
// protected server wants an Authorization header, which EventSource cannot
// send.
//
// Every registry string reaches the page through textContent or an
// attribute, never through innerHTML.
'use strict';

(() => {
  // ---------------------------------------------------------------------
  // Settings
  // ---------------------------------------------------------------------

  const REGISTRY_URL = 'api/registry';
  const EVENTS_URL = 'api/events';
  const TOKEN_KEY = 'discovered.token';
  // Reconnect delays: 1 s, 2 s, 4 s, 8 s, then 10 s for as long as it takes.
  const BACKOFF_MS = [1000, 2000, 4000, 8000, 10000];
  // The server sends a keepalive comment every 15 s; after 40 s of silence
  // the connection is presumed dead (a half-open TCP connection never errors).
  const STALL_MS = 40000;
  // A heartbeat renews a node's TTL without any event, so a countdown that
  // runs out while the node is still listed may just be stale: reload the
  // registry once the node is this far past its deadline...
  const STALE_GRACE_MS = 1500;
  // ...but never more often than this.
  const REFRESH_MIN_INTERVAL_MS = 5000;

  const COLUMNS = ['Node', 'Addresses', 'Status', 'Locality', 'Weight', 'TTL (s)',
    'FQDN', 'OS', 'Arch', 'CPUs', 'Memory', 'Metadata'];

  // ---------------------------------------------------------------------
  // Page elements
  // ---------------------------------------------------------------------

  const byId = (id) => document.getElementById(id);
  const ui = {
    registry: byId('registry'),
    empty: byId('empty'),
    counts: byId('counts'),
    live: byId('live'),
    liveDetail: byId('live-detail'),
    search: byId('search'),
    banner: byId('banner'),
    bannerText: byId('banner-text'),
    bannerClose: byId('banner-close'),
    auth: byId('auth'),
    authError: byId('auth-error'),
    token: byId('token'),
    tokenForget: byId('token-forget'),
  };

  // ---------------------------------------------------------------------
  // State
  // ---------------------------------------------------------------------

  // The registry as shown, each level holding its own DOM element:
  // group name -> {name, el, list, services: Map(service name -> service)}
  // service = {group, name, key, el, table, tbody, countsEl, noNodes, hay,
  //            nodes: Map(node name -> {node, json, row, ttlCell, hay})}
  const groups = new Map();

  let query = '';            // the search box, lower-cased
  let clockOffsetMs = 0;     // server clock minus ours
  let haveSnapshot = false;  // false until the first registry load
  let conn = null;           // the current event-stream connection
  let attempt = 0;           // failed connection attempts in a row
  let reconnectTimer = 0;
  let lastRefreshAt = 0;
  let refreshedFor = new Set(); // "key@expires" of stale TTLs already reloaded for
  const dirty = new Set();   // services whose counts/filter need redoing
  let flushQueued = false;

  // ---------------------------------------------------------------------
  // Small helpers
  // ---------------------------------------------------------------------

  /** Creates an element with a class and, optionally, text. */
  function el(tag, className, text) {
    const e = document.createElement(tag);
    if (className) e.className = className;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  /** A muted dash for a value the node did not report. */
  function none() {
    return el('span', 'none', '-');
  }

  function plural(n, word) {
    return `${n} ${word}${n === 1 ? '' : 's'}`;
  }

  /** The server's clock, as best we know it: TTLs are the server's deadlines. */
  function serverNow() {
    return Date.now() + clockOffsetMs;
  }

  /** `ip:port`, with IPv6 in brackets as in a URL; just the ip without a port. */
  function address(ip, port) {
    if (!port) return ip;
    return ip.includes(':') ? `[${ip}]:${port}` : `${ip}:${port}`;
  }

  function localityOf(node) {
    return [node.region, node.zone, node.sub_zone].filter(Boolean).join('/');
  }

  function formatTime(ms) {
    return typeof ms === 'number' ? new Date(ms).toISOString() : 'never';
  }

  function describeError(err) {
    // fetch() reports every network failure as a TypeError with a terse message.
    if (err && err.name === 'TypeError') {
      return /network/i.test(err.message) ? err.message : `network error (${err.message})`;
    }
    return (err && err.message) || String(err);
  }

  /** The server's error text: the `error` of a JSON body, else the body, else the status. */
  async function errorText(res) {
    let text = '';
    try {
      text = (await res.text()).trim();
    } catch (_) {
      // The body is optional here: the status alone will do.
    }
    try {
      const body = JSON.parse(text);
      if (body && typeof body.error === 'string') return body.error;
    } catch (_) {
      // Not JSON: use the text as it is.
    }
    return text ? text.slice(0, 300) : `HTTP ${res.status} ${res.statusText}`.trim();
  }

  /** Inserts `child` among `parent`'s children in order of key (names sort like the server's). */
  function insertSorted(parent, child, key, keyOf) {
    const last = parent.lastElementChild;
    // Fast path: a registry load arrives in order, so most inserts append.
    if (!last || keyOf(last) < key) {
      parent.appendChild(child);
      return;
    }
    for (const sibling of parent.children) {
      if (keyOf(sibling) > key) {
        parent.insertBefore(child, sibling);
        return;
      }
    }
    parent.appendChild(child);
  }

  // ---------------------------------------------------------------------
  // Token (kept per tab, in sessionStorage, which can be unavailable)
  // ---------------------------------------------------------------------

  function getToken() {
    try {
      return sessionStorage.getItem(TOKEN_KEY) || '';
    } catch (_) {
      return '';
    }
  }

  function setToken(token) {
    try {
      if (token) sessionStorage.setItem(TOKEN_KEY, token);
      else sessionStorage.removeItem(TOKEN_KEY);
    } catch (_) {
      showBanner('This browser does not keep the token (sessionStorage is unavailable).');
    }
    ui.tokenForget.hidden = !token;
  }

  function authHeaders() {
    const token = getToken();
    return token ? { Authorization: `Bearer ${token}` } : {};
  }

  // ---------------------------------------------------------------------
  // Banner, live indicator, auth form
  // ---------------------------------------------------------------------

  function showBanner(message) {
    ui.bannerText.textContent = message;
    ui.banner.hidden = false;
  }

  function clearBanner() {
    ui.banner.hidden = true;
    ui.bannerText.textContent = '';
  }

  /** `#live` says `live` only while the stream is connected and the server is ready. */
  function setLive(isLive, detail = '') {
    ui.live.textContent = isLive ? 'live' : 'offline';
    ui.live.dataset.state = isLive ? 'live' : 'offline';
    ui.liveDetail.textContent = detail;
    // What is shown while offline may be out of date: say so by dimming it.
    document.body.classList.toggle('stale', !isLive && haveSnapshot);
  }

  function showAuth(message) {
    clearBanner(); // the form says what is wrong; an older error would only confuse
    ui.authError.textContent = message;
    ui.auth.hidden = false;
    // What the refused identity could see is not for whoever holds the page now.
    applySnapshot({ groups: [] });
    haveSnapshot = false;
    updateEmpty();
    ui.token.focus();
  }

  function hideAuth() {
    ui.auth.hidden = true;
    ui.authError.textContent = '';
  }

  // ---------------------------------------------------------------------
  // Rendering: groups, services, node rows
  // ---------------------------------------------------------------------

  function ensureGroup(name) {
    let group = groups.get(name);
    if (group) return group;
    const section = el('section', 'group');
    section.dataset.group = name;
    const heading = el('h2', 'group-name');
    heading.append(el('span', 'kind', 'group'), el('span', 'name', name));
    const list = el('div', 'services');
    section.append(heading, list);
    group = { name, el: section, list, services: new Map() };
    groups.set(name, group);
    insertSorted(ui.registry, section, name, (e) => e.dataset.group);
    return group;
  }

  function ensureService(groupName, name) {
    const group = ensureGroup(groupName);
    let service = group.services.get(name);
    if (service) return service;

    const key = `${groupName}/${name}`;
    const block = el('div', 'service');
    block.dataset.service = key;

    const head = el('div', 'service-head');
    const countsEl = el('span', 'service-counts');
    head.append(el('h3', 'service-name', name), countsEl);

    const table = el('table', 'nodes');
    const headRow = el('tr');
    for (const title of COLUMNS) headRow.appendChild(el('th', null, title));
    const thead = el('thead');
    thead.appendChild(headRow);
    const tbody = el('tbody');
    table.append(thead, tbody);
    const wrap = el('div', 'table-wrap');
    wrap.appendChild(table);

    // A service stays listed after its last node goes (until it is removed).
    const noNodes = el('p', 'no-nodes', 'No live nodes.');

    block.append(head, wrap, noNodes);
    service = {
      group: groupName, name, key, el: block, table: wrap, tbody, countsEl, noNodes,
      hay: `${groupName}\n${name}`.toLowerCase(),
      nodes: new Map(),
    };
    group.services.set(name, service);
    insertSorted(group.list, block, key, (e) => e.dataset.service);
    markDirty(service);
    return service;
  }

  function removeService(groupName, name) {
    const group = groups.get(groupName);
    const service = group && group.services.get(name);
    if (!service) return;
    service.el.remove();
    group.services.delete(name);
    dirty.delete(service);
    if (group.services.size === 0) {
      group.el.remove();
      groups.delete(groupName);
    }
    scheduleFlush();
  }

  /** What the search box matches for a node: group, service, name, addresses, locality, metadata. */
  function nodeHaystack(node) {
    const parts = [node.group, node.service, node.name, node.region, node.zone, node.sub_zone];
    for (const ip of node.ip || []) parts.push(ip, address(ip, node.port));
    for (const [k, v] of Object.entries(node.metadata || {})) parts.push(`${k}=${v}`);
    return parts.filter(Boolean).join('\n').toLowerCase();
  }

  /** Adds a node's row or replaces it; `flash` highlights a change that arrived live. */
  function upsertNode(node, flash) {
    if (!node || !node.group || !node.service || !node.name) return;
    const service = ensureService(node.group, node.service);
    const json = JSON.stringify(node);
    const old = service.nodes.get(node.name);
    // A registry reload repeats what is already shown: leave those rows alone.
    if (old && old.json === json) return;

    const key = `${service.key}/${node.name}`;
    const row = buildRow(node, key);
    const entry = { node, json, row, ttlCell: row.querySelector('.ttl'), hay: nodeHaystack(node) };
    if (old) old.row.replaceWith(row);
    else insertSorted(service.tbody, row, key, (e) => e.dataset.node);
    service.nodes.set(node.name, entry);
    updateTtl(entry, serverNow());
    if (flash) row.classList.add(old ? 'changed' : 'added');
    markDirty(service);
  }

  function removeNode(groupName, serviceName, nodeName) {
    const group = groups.get(groupName);
    const service = group && group.services.get(serviceName);
    const entry = service && service.nodes.get(nodeName);
    if (!entry) return;
    entry.row.remove();
    service.nodes.delete(nodeName);
    markDirty(service);
  }

  function buildRow(node, key) {
    const status = node.status === 'draining' ? 'draining' : 'serving';
    const row = el('tr', 'node');
    row.dataset.node = key;
    row.dataset.status = status;
    row.append(
      nameCell(node),
      addressCell(node),
      statusCell(status),
      textCell('locality', localityOf(node),
        `region: ${node.region || '-'}\nzone: ${node.zone || '-'}\nsub_zone: ${node.sub_zone || '-'}`),
      weightCell(node.weight),
      textCell('ttl num', ''), // filled in by updateTtl
      textCell('fqdn', node.fqdn),
      osCell(node),
      textCell('arch', node.arch),
      textCell('cpus num', node.cpu_count || ''),
      memoryCell(node.memory_mb),
      metadataCell(node.metadata),
    );
    return row;
  }

  function textCell(className, value, title) {
    const td = el('td', className);
    if (value === undefined || value === null || value === '') td.appendChild(none());
    else td.textContent = String(value);
    if (title) td.title = title;
    return td;
  }

  function nameCell(node) {
    const td = el('td', 'name', node.name);
    // The details that do not earn a column are one hover away.
    td.title = [
      `instance: ${node.instance_id || '-'}`,
      `registered: ${formatTime(node.registered_at_ms)}`,
      `updated: ${formatTime(node.updated_at_ms)}`,
      `booted: ${node.last_boot_ms == null ? '-' : formatTime(node.last_boot_ms)}`,
    ].join('\n');
    return td;
  }

  function addressCell(node) {
    const td = el('td', 'addr');
    const ips = node.ip || [];
    if (ips.length === 0) {
      // A node may register a port but no address: show what there is.
      td.appendChild(node.port ? el('span', 'address', `:${node.port}`) : none());
    }
    for (const ip of ips) td.appendChild(el('span', 'address', address(ip, node.port)));
    return td;
  }

  function statusCell(status) {
    const td = el('td', 'status');
    td.appendChild(el('span', `badge badge-${status}`, status));
    return td;
  }

  function weightCell(weight) {
    // 0 means unset, which the server counts as 1.
    if (!weight) return textCell('weight num unset', 1, 'unset (counted as 1)');
    return textCell('weight num', weight);
  }

  function osCell(node) {
    const td = textCell('os', node.os);
    if (node.platform_name) {
      td.appendChild(el('span', 'platform', node.platform_name));
      td.title = node.platform_name;
    }
    return td;
  }

  function memoryCell(mb) {
    const td = textCell('memory num', mb ? `${mb} MB` : '');
    if (mb) td.title = `${(mb / 1024).toFixed(1)} GiB`;
    return td;
  }

  function metadataCell(metadata) {
    const td = el('td', 'meta');
    const entries = Object.entries(metadata || {}).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    if (entries.length === 0) td.appendChild(none());
    for (const [k, v] of entries) {
      const chip = el('span', 'chip');
      chip.title = `${k}=${v}`;
      chip.append(el('span', 'chip-key', k), el('span', 'chip-eq', '='), el('span', 'chip-value', v));
      td.appendChild(chip);
    }
    return td;
  }

  // ---------------------------------------------------------------------
  // Counts and filtering, redone once per batch of changes
  // ---------------------------------------------------------------------

  function markDirty(service) {
    dirty.add(service);
    scheduleFlush();
  }

  /** Batches the bookkeeping: a registry load touches a service once, not once per node. */
  function scheduleFlush() {
    if (flushQueued) return;
    flushQueued = true;
    queueMicrotask(flush);
  }

  function flush() {
    flushQueued = false;
    const touchedGroups = new Set();
    for (const service of dirty) {
      refreshService(service);
      const group = groups.get(service.group);
      if (group) touchedGroups.add(group);
    }
    dirty.clear();
    for (const group of touchedGroups) refreshGroupVisibility(group);
    updateCounts();
    updateEmpty();
  }

  function refreshService(service) {
    let serving = 0;
    let draining = 0;
    let visible = 0;
    for (const entry of service.nodes.values()) {
      if (entry.row.dataset.status === 'draining') draining += 1;
      else serving += 1;
      const show = !query || entry.hay.includes(query);
      entry.row.hidden = !show;
      // A CSS animation restarts when a hidden row is shown: a change that
      // arrived out of sight is not highlighted later.
      if (!show) entry.row.classList.remove('added', 'changed');
      if (show) visible += 1;
    }
    const total = service.nodes.size;
    service.countsEl.replaceChildren(
      el('span', 'count-nodes', plural(total, 'node')),
      el('span', 'sep', ' · '),
      el('span', `count-serving${serving ? ' some' : ''}`, `${serving} serving`),
      el('span', 'sep', ' · '),
      el('span', `count-draining${draining ? ' some' : ''}`, `${draining} draining`),
    );
    service.table.hidden = total === 0;
    service.noNodes.hidden = total !== 0;
    // A service whose own name matches shows even with no node matching.
    service.el.hidden = !(visible > 0 || !query || service.hay.includes(query));
  }

  function refreshGroupVisibility(group) {
    let anyVisible = false;
    for (const service of group.services.values()) {
      if (!service.el.hidden) anyVisible = true;
    }
    group.el.hidden = !anyVisible;
  }

  function applyFilter() {
    query = ui.search.value.trim().toLowerCase();
    for (const group of groups.values()) {
      for (const service of group.services.values()) dirty.add(service);
    }
    flush();
  }

  function updateCounts() {
    let services = 0;
    let nodes = 0;
    for (const group of groups.values()) {
      services += group.services.size;
      for (const service of group.services.values()) nodes += service.nodes.size;
    }
    ui.counts.textContent = haveSnapshot
      ? `${plural(groups.size, 'group')} · ${plural(services, 'service')} · ${plural(nodes, 'node')}`
      : '';
  }

  /** The line under the header when there is nothing (or nothing matching) to show. */
  function updateEmpty() {
    let message = '';
    if (!ui.auth.hidden) message = '';
    else if (!haveSnapshot) message = 'Connecting…';
    else if (groups.size === 0) message = 'Nothing is registered yet: nodes appear here as they register.';
    else if (query && ![...groups.values()].some((g) => !g.el.hidden)) {
      message = `No service or node matches “${ui.search.value.trim()}”.`;
    }
    ui.empty.textContent = message;
    ui.empty.hidden = !message;
  }

  // ---------------------------------------------------------------------
  // TTL countdown
  // ---------------------------------------------------------------------

  function updateTtl(entry, now) {
    const expires = entry.node.expires_at_ms;
    const cell = entry.ttlCell;
    if (typeof expires !== 'number') return; // stays '-': the node never expires
    // Rounded, as Redis's TTL is: the server clock is only estimated (to
    // half a round trip), and rounding up made a fresh 120 s node read 121.
    const left = Math.max(0, Math.round((expires - now) / 1000));
    cell.textContent = String(left);
    cell.title = `expires ${formatTime(expires)}`;
    cell.classList.toggle('ttl-low', left <= 5);
  }

  /** Once a second: count every TTL down, and notice countdowns that went stale. */
  function tick() {
    const now = serverNow();
    let stale = null;
    for (const group of groups.values()) {
      for (const service of group.services.values()) {
        for (const entry of service.nodes.values()) {
          updateTtl(entry, now);
          const expires = entry.node.expires_at_ms;
          if (typeof expires === 'number' && now - expires > STALE_GRACE_MS) {
            const mark = `${entry.row.dataset.node}@${expires}`;
            if (!refreshedFor.has(mark)) stale = mark;
          }
        }
      }
    }
    // Past its deadline and still listed: either the expiry event is on its
    // way, or heartbeats renewed it silently. One reload per deadline tells.
    if (stale && conn && conn.ready && Date.now() - lastRefreshAt >= REFRESH_MIN_INTERVAL_MS) {
      refreshedFor.add(stale);
      loadRegistry(conn);
    }
  }

  // ---------------------------------------------------------------------
  // Registry snapshot
  // ---------------------------------------------------------------------

  /** Makes the page show exactly `registry`: adds, updates and removes in place. */
  function applySnapshot(registry) {
    const keepServices = new Set();
    const keepNodes = new Set();
    for (const group of registry.groups || []) {
      for (const service of group.services || []) {
        ensureService(group.name, service.name);
        keepServices.add(`${group.name}/${service.name}`);
        for (const node of service.nodes || []) {
          // The enclosing names are the authority on where a node belongs.
          const placed = { ...node, group: group.name, service: service.name };
          upsertNode(placed, false);
          keepNodes.add(`${group.name}/${service.name}/${node.name}`);
        }
      }
    }
    for (const group of [...groups.values()]) {
      for (const service of [...group.services.values()]) {
        if (!keepServices.has(service.key)) {
          removeService(group.name, service.name);
          continue;
        }
        for (const name of [...service.nodes.keys()]) {
          if (!keepNodes.has(`${service.key}/${name}`)) removeNode(group.name, service.name, name);
        }
      }
    }
    // Forget stale-TTL marks of nodes that are gone or got a new deadline.
    const stillStale = new Set();
    for (const mark of refreshedFor) {
      const at = mark.lastIndexOf('@');
      const [g, s, n] = mark.slice(0, at).split('/');
      const entry = groups.get(g)?.services.get(s)?.nodes.get(n);
      if (entry && String(entry.node.expires_at_ms) === mark.slice(at + 1)) stillStale.add(mark);
    }
    refreshedFor = stillStale;
  }

  /** GET /api/registry; resolves to {kind: 'ok'|'auth'|'error', ...}, never throws. */
  async function fetchRegistry(signal) {
    const sent = Date.now();
    let res;
    try {
      res = await fetch(REGISTRY_URL, { headers: authHeaders(), cache: 'no-store', signal });
    } catch (err) {
      return { kind: 'error', message: `Loading the registry failed: ${describeError(err)}` };
    }
    const received = Date.now();
    if (res.status === 401 || res.status === 403) {
      return { kind: 'auth', message: `${res.status}: ${await errorText(res)}` };
    }
    if (!res.ok) {
      return { kind: 'error', message: `Loading the registry failed: ${await errorText(res)}` };
    }
    let registry;
    try {
      registry = await res.json();
    } catch (err) {
      return { kind: 'error', message: `The registry answer is not JSON: ${describeError(err)}` };
    }
    // The server read its clock somewhere between our send and receive.
    const offset = typeof registry.server_time_ms === 'number'
      ? registry.server_time_ms - (sent + received) / 2
      : 0;
    return { kind: 'ok', registry, offset };
  }

  /**
   * Loads the registry for connection `c`, holding back the events that
   * arrive meanwhile and replaying them on top. A reload asked for during a
   * load (a `resync`) runs right after it.
   */
  async function loadRegistry(c) {
    if (c.loading) {
      c.reloadQueued = true;
      return;
    }
    c.loading = true;
    try {
      do {
        c.reloadQueued = false;
        c.pending = [];
        lastRefreshAt = Date.now();
        const result = await fetchRegistry(c.controller.signal);
        if (c !== conn) return; // superseded meanwhile
        if (result.kind !== 'ok') {
          failConnection(c, result);
          return;
        }
        clockOffsetMs = result.offset;
        haveSnapshot = true;
        applySnapshot(result.registry);
        const held = c.pending;
        c.pending = [];
        for (const { type, data } of held) applyEvent(type, data, true);
        clearBanner();
        setLive(true);
        tick();
      } while (c.reloadQueued);
    } finally {
      c.loading = false;
      c.pending = [];
      scheduleFlush();
    }
  }

  // ---------------------------------------------------------------------
  // Events
  // ---------------------------------------------------------------------

  /** Applies one change event to the page. */
  function applyEvent(type, data, flash) {
    switch (type) {
      case 'node_added':
      case 'node_updated':
        upsertNode(data.node, flash);
        break;
      case 'node_removed':
      case 'node_expired':
        if (data.node) removeNode(data.node.group, data.node.service, data.node.name);
        break;
      case 'service_registered':
      case 'service_updated':
        // A service can be listed before it has any node.
        if (data.group && data.service) ensureService(data.group, data.service);
        break;
      case 'service_removed':
        if (data.group && data.service) removeService(data.group, data.service);
        break;
      default:
        // An event type this page does not know yet: nothing to show for it.
        break;
    }
  }

  /** Handles one SSE frame of connection `c`. */
  function onFrame(c, frame) {
    if (c !== conn) return;
    if (frame.event === 'ready') {
      c.ready = true;
      attempt = 0;
      loadRegistry(c);
      return;
    }
    if (frame.event === 'resync') {
      loadRegistry(c);
      return;
    }
    let data;
    try {
      data = JSON.parse(frame.data || '{}');
    } catch (_) {
      // A change we cannot read is a change we missed: reload everything.
      showBanner(`Unreadable "${frame.event}" event; reloading the registry.`);
      loadRegistry(c);
      return;
    }
    if (c.loading) c.pending.push({ type: frame.event, data });
    else applyEvent(frame.event, data, true);
  }

  /**
   * A Server-Sent Events parser (the subset the server uses): `event:` and
   * `data:` fields, a blank line ends a frame, `:` starts a comment; lines
   * end with LF, CRLF or CR.
   */
  class SseParser {
    constructor(onFrameCallback) {
      this.onFrame = onFrameCallback;
      this.buffer = '';
      this.event = '';
      this.data = [];
    }

    push(text) {
      const buf = this.buffer + text;
      let pos = 0;
      for (;;) {
        const lf = buf.indexOf('\n', pos);
        const cr = buf.indexOf('\r', pos);
        let end;
        let next;
        if (cr !== -1 && (lf === -1 || cr < lf)) {
          // A CR at the very end may be the first half of a CRLF: wait for more.
          if (cr === buf.length - 1) break;
          end = cr;
          next = buf[cr + 1] === '\n' ? cr + 2 : cr + 1;
        } else if (lf !== -1) {
          end = lf;
          next = lf + 1;
        } else {
          break;
        }
        this.line(buf.slice(pos, end));
        pos = next;
      }
      this.buffer = buf.slice(pos);
    }

    line(line) {
      if (line === '') {
        this.dispatch();
        return;
      }
      if (line[0] === ':') return; // a comment: the keepalive
      const colon = line.indexOf(':');
      const field = colon === -1 ? line : line.slice(0, colon);
      let value = colon === -1 ? '' : line.slice(colon + 1);
      if (value[0] === ' ') value = value.slice(1);
      if (field === 'event') this.event = value;
      else if (field === 'data') this.data.push(value);
      // `id` and `retry` mean nothing to this page: it reconnects on its own terms.
    }

    dispatch() {
      if (this.event || this.data.length) {
        this.onFrame({ event: this.event || 'message', data: this.data.join('\n') });
      }
      this.event = '';
      this.data = [];
    }
  }

  // ---------------------------------------------------------------------
  // The event-stream connection
  // ---------------------------------------------------------------------

  /** Ends connection `c` for `failure` ({kind, message}); the first reason given wins. */
  function failConnection(c, failure) {
    if (!c.failure) c.failure = failure;
    c.controller.abort();
  }

  /** Restarts the silence timer: any byte from the server, keepalives included, proves it is there. */
  function armStallTimer(c) {
    clearTimeout(c.stallTimer);
    c.stallTimer = setTimeout(() => failConnection(c, {
      kind: 'error',
      message: `No data from the event stream for ${STALL_MS / 1000} s`,
    }), STALL_MS);
  }

  /** Reads /api/events until it ends; resolves to why it ended, never throws. */
  async function readStream(c) {
    try {
      const res = await fetch(EVENTS_URL, {
        headers: { ...authHeaders(), Accept: 'text/event-stream' },
        cache: 'no-store',
        signal: c.controller.signal,
      });
      if (res.status === 401 || res.status === 403) {
        return { kind: 'auth', message: `${res.status}: ${await errorText(res)}` };
      }
      if (!res.ok) {
        return { kind: 'error', message: `The event stream failed: ${await errorText(res)}` };
      }
      if (!res.body) {
        return { kind: 'error', message: 'This browser cannot read a streamed response.' };
      }
      const reader = res.body.getReader();
      const decoder = new TextDecoder();
      const parser = new SseParser((frame) => onFrame(c, frame));
      armStallTimer(c);
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        armStallTimer(c);
        parser.push(decoder.decode(value, { stream: true }));
      }
      return c.failure || { kind: 'error', message: 'The event stream ended' };
    } catch (err) {
      return c.failure || { kind: 'error', message: `The event stream broke: ${describeError(err)}` };
    } finally {
      clearTimeout(c.stallTimer);
    }
  }

  /** Opens a new connection (dropping any current one) and handles its end. */
  async function connect() {
    clearTimeout(reconnectTimer);
    if (conn) conn.controller.abort();
    const c = {
      controller: new AbortController(),
      stallTimer: 0,
      ready: false,
      loading: false,
      reloadQueued: false,
      pending: [],
      failure: null,
    };
    conn = c;
    setLive(false, attempt ? 'connecting…' : '');
    const result = await readStream(c);
    if (c !== conn) return; // replaced by a newer connection: it is in charge now
    conn = null;
    c.controller.abort(); // also stops a registry load still in flight
    setLive(false);
    if (result.kind === 'auth') showAuth(result.message);
    else scheduleReconnect(result.message);
  }

  function scheduleReconnect(reason) {
    const delay = BACKOFF_MS[Math.min(attempt, BACKOFF_MS.length - 1)];
    attempt += 1;
    showBanner(`${reason}. Reconnecting in ${delay / 1000} s…`);
    setLive(false, `retrying in ${delay / 1000} s`);
    reconnectTimer = setTimeout(connect, delay);
  }

  // ---------------------------------------------------------------------
  // Wiring
  // ---------------------------------------------------------------------

  function onTokenSubmit(event) {
    event.preventDefault();
    const token = ui.token.value.trim();
    if (!token) return;
    setToken(token);
    ui.token.value = '';
    hideAuth();
    clearBanner();
    attempt = 0;
    updateEmpty();
    connect();
  }

  function onTokenForget() {
    setToken('');
    attempt = 0;
    connect();
  }

  /** `/` jumps to the search box, Escape clears it: the usual keys for a filter. */
  function onKey(event) {
    const typing = event.target instanceof HTMLInputElement;
    if (event.key === '/' && !typing) {
      event.preventDefault();
      ui.search.focus();
    } else if (event.key === 'Escape' && event.target === ui.search) {
      ui.search.value = '';
      applyFilter();
    }
  }

  /** Live highlights end by themselves, so a later change can highlight again. */
  function onAnimationEnd(event) {
    const row = event.target;
    if (row instanceof HTMLTableRowElement) row.classList.remove('added', 'changed');
  }

  function start() {
    ui.search.addEventListener('input', applyFilter);
    ui.auth.addEventListener('submit', onTokenSubmit);
    ui.tokenForget.addEventListener('click', onTokenForget);
    ui.bannerClose.addEventListener('click', clearBanner);
    ui.registry.addEventListener('animationend', onAnimationEnd);
    document.addEventListener('keydown', onKey);
    ui.tokenForget.hidden = !getToken();
    query = ui.search.value.trim().toLowerCase(); // a value the browser restored
    setInterval(tick, 1000);
    updateEmpty();
    connect();
  }

  start();
})();
