/* storeclerk kiosk page.
 *
 * Speaks the WebSocket protocol of docs/runtime.md over /ws. Plain modern JS, no build step, no network beyond
 * this kiosk. Server text is only ever written with textContent (never innerHTML). Every visible string comes
 * from /static/strings/<lang>.json, with the built-in English below as the fallback.
 */
(() => {
  'use strict';

  // ------------------------------------------------------------------ strings

  /** Built-in English: used when the locale file fails to load, and for any key it lacks. Keep in step with
   * strings/en.json (a test checks they match). */
  const FALLBACK_STRINGS = Object.freeze({
    'lang': 'en',
    'dir': 'ltr',
    'page.title': 'Store assistant',
    'store.name': 'Welcome to our store',
    'store.welcome': 'Welcome to {store}',
    'attract.headline': 'Ask me anything',
    'attract.sub': 'Products, prices, aisles, orders, opening hours and returns.',
    'attract.touch': 'Touch to start',
    'attract.hint': 'You can also call a member of staff at any time.',
    'settings.label': 'Display settings',
    'font.group': 'Text size',
    'font.normal': 'A',
    'font.large': 'A+',
    'font.larger': 'A++',
    'font.normal.label': 'A, normal text size',
    'font.large.label': 'A+, large text',
    'font.larger.label': 'A++, extra large text',
    'contrast.toggle': 'High contrast',
    'contrast.toggle.label': 'High contrast colours',
    'actions.label': 'Help',
    'staff.button': 'Call staff',
    'staff.button.label': 'Call staff to come and help you',
    'staff.coming': 'Someone is coming to help you.',
    'staff.calling': 'Calling a member of staff…',
    'done.button': 'Done',
    'done.button.label': 'Done, end the conversation',
    'conversation.label': 'Conversation',
    'conversation.empty': 'Hi! What can I help you with today?',
    'conversation.suggestions.label': 'Things you can ask',
    'suggestions': [
      { label: 'Where is the oat milk?', text: 'where can I find the oat milk' },
      { label: 'Opening hours', text: 'what are your opening hours' },
      { label: 'Track my order', text: 'where is my order' },
      { label: 'Returns', text: 'how do I return something' },
    ],
    'quick_replies.label': 'Suggested replies',
    'input.label': 'Type your question',
    'input.placeholder': 'Type your question…',
    'send.button': 'Send',
    'send.button.label': 'Send message',
    'mic.button.label': 'Speak your question',
    'voice.mute': 'Mute voice',
    'voice.mute.label': "Mute voice, the assistant's spoken answers",
    'voice.caption.label': 'What I heard: ',
    'voice.idle.ptt': 'Hold the microphone button and speak.',
    'voice.idle.open': 'Speak any time. I am listening.',
    'voice.listening': 'Listening…',
    'voice.thinking': 'Thinking…',
    'voice.speaking': 'Speaking…',
    'voice.unavailable': 'Voice is not available right now. Please type your question.',
    'role.you': 'You',
    'role.kiosk': 'Assistant',
    'typing': 'The assistant is typing…',
    'status.connecting': 'Connecting…',
    'status.reconnecting': 'Reconnecting…',
    'status.offline': 'Connection lost. Trying again…',
    'error.lead': 'Sorry, something went wrong.',
    'error.retry': 'Please try again, or call a member of staff.',
    'error.timeout': 'Sorry, that is taking longer than usual. Please try again.',
    'card.source': 'from: {source}',
    'card.product': 'Product',
    'card.price': 'Price',
    'card.unit': '/ {unit}',
    'card.unit.each': 'each',
    'card.aisle': 'Aisle {aisle}',
    'card.tags': 'Tags',
    'card.image.missing': 'No picture available',
    'card.order': 'Order {order_id}',
    'card.order.kicker': 'Your order',
    'card.order.status': 'Status',
    'card.order.eta': 'Expected {eta}',
    'card.order.updated': 'Updated {updated}',
    'card.order.items': 'Items',
    'card.info': 'Information',
    'card.staff': 'Help is on the way',
    'order.status.placed': 'Placed',
    'order.status.processing': 'Processing',
    'order.status.shipped': 'Shipped',
    'order.status.delivered': 'Delivered',
    'order.status.ready': 'Ready for pick-up',
    'order.status.cancelled': 'Cancelled',
    'order.status.returned': 'Returned',
    'ended.goodbye': 'Thank you, goodbye!',
    'camera.product': 'Shown to the camera: {label}',
    'camera.order': 'Shown to the camera: an order code',
    'camera.code': 'Shown to the camera: a code',
  });

  let strings = { ...FALLBACK_STRINGS };

  /** The string for `key`, with {name} placeholders filled from `vars`. */
  function t(key, vars) {
    let s = Object.prototype.hasOwnProperty.call(strings, key) ? strings[key] : FALLBACK_STRINGS[key];
    if (s === undefined || s === null) s = key;
    if (typeof s !== 'string') return s;
    if (vars) s = s.replace(/\{(\w+)\}/g, (m, k) => (vars[k] === undefined || vars[k] === null ? m : String(vars[k])));
    return s;
  }

  function localeUrl() {
    const asked = new URLSearchParams(location.search).get('lang');
    const lang = asked && /^[a-z]{2,3}(-[A-Za-z0-9]{2,8})?$/.test(asked) ? asked : 'en';
    return `/static/strings/${lang}.json`;
  }

  async function loadStrings() {
    try {
      const res = await fetch(localeUrl(), { cache: 'no-cache' });
      if (!res.ok) throw new Error(`HTTP ${res.status}`);
      const data = await res.json();
      if (!data || typeof data !== 'object' || Array.isArray(data)) throw new Error('not an object');
      strings = { ...FALLBACK_STRINGS, ...data };
      return true;
    } catch (err) {
      // The page works on its built-in English; a warning, not an error: nothing is broken for the customer.
      console.warn('storeclerk: locale file not loaded, using built-in English:', err && err.message);
      strings = { ...FALLBACK_STRINGS };
      return false;
    }
  }

  function applyStrings() {
    const root = document.documentElement;
    root.lang = String(t('lang') || 'en');
    root.dir = t('dir') === 'rtl' ? 'rtl' : 'ltr';
    document.title = t('page.title');
    for (const node of document.querySelectorAll('[data-i18n]')) node.textContent = t(node.dataset.i18n);
    for (const node of document.querySelectorAll('[data-i18n-label]')) node.setAttribute('aria-label', t(node.dataset.i18nLabel));
    for (const node of document.querySelectorAll('[data-i18n-placeholder]')) {
      node.setAttribute('placeholder', t(node.dataset.i18nPlaceholder));
    }
    renderSuggestions();
    renderVoice();
  }

  // ------------------------------------------------------------------ DOM helpers

  const $ = (id) => document.getElementById(id);
  const SVG_NS = 'http://www.w3.org/2000/svg';

  /** el('div', {class: 'x'}, 'text', child, …): children are nodes or strings (written as text, never HTML). */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'class') node.className = v;
      else if (k === 'text') node.textContent = v;
      else node.setAttribute(k, v === true ? '' : String(v));
    }
    for (const c of children) {
      if (c === undefined || c === null || c === false) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  function icon(name) {
    const svg = document.createElementNS(SVG_NS, 'svg');
    svg.setAttribute('class', 'icon');
    svg.setAttribute('aria-hidden', 'true');
    svg.setAttribute('focusable', 'false');
    const use = document.createElementNS(SVG_NS, 'use');
    use.setAttribute('href', `#i-${name}`);
    svg.append(use);
    return svg;
  }

  const str = (v) => (v === undefined || v === null ? '' : String(v)).trim();
  const reducedMotion = () => window.matchMedia && window.matchMedia('(prefers-reduced-motion: reduce)').matches;

  // ------------------------------------------------------------------ preferences (persisted)

  const PREF_FONT = 'storeclerk.fontLevel';
  const PREF_CONTRAST = 'storeclerk.contrast';

  function readPref(key) {
    try { return window.localStorage.getItem(key); } catch (_) { return null; }
  }
  function writePref(key, value) {
    try { window.localStorage.setItem(key, value); } catch (_) { /* private mode or full: the toggle still works */ }
  }

  function setFontLevel(level, persist) {
    const n = Math.max(0, Math.min(2, Number(level) || 0));
    document.documentElement.dataset.font = String(n);
    for (const b of document.querySelectorAll('[data-font-level]')) {
      b.setAttribute('aria-pressed', String(Number(b.dataset.fontLevel) === n));
    }
    if (persist) writePref(PREF_FONT, String(n));
  }

  function setContrast(high, persist) {
    document.documentElement.dataset.contrast = high ? 'high' : 'normal';
    $('contrast-toggle').setAttribute('aria-pressed', String(!!high));
    if (persist) writePref(PREF_CONTRAST, high ? 'high' : 'normal');
  }

  function restorePrefs() {
    setFontLevel(readPref(PREF_FONT) || 0, false);
    const c = readPref(PREF_CONTRAST);
    const systemHigh = window.matchMedia && window.matchMedia('(prefers-contrast: more)').matches;
    setContrast(c ? c === 'high' : systemHigh, false);
  }

  // ------------------------------------------------------------------ connection

  const state = {
    ws: null,
    open: false,
    retry: 0,
    reconnectTimer: 0,
    connStatusTimer: 0,
    outbox: [],            // frames waiting for the socket to open
    session: null,
    starting: false,
    afterSession: [],      // callbacks waiting for a session id
    lastTurn: null,        // {kind, text} of the turn awaiting an answer (re-sent once if the session was lost)
    resent: false,
    waiting: false,
    waitTimer: 0,
    idleTimer: 0,
    endTimer: 0,
    view: 'attract',
    // The kiosk's microphone and speaker, as its last voice_state said; "off" until it says otherwise.
    voice: { state: 'off', muted: false, mode: 'ptt' },
    ptt: null,             // how the microphone button is held: null, 'pointer' or 'toggle' (keyboard)
    pttTimer: 0,
  };
  const OUTBOX_MAX = 20;
  const REPLY_TIMEOUT_MS = 30000;
  // The kiosk ends idle sessions itself ("ended", reason "idle"). This is only a backstop for when that message
  // cannot arrive (the socket was replaced and the kiosk does not know this page owns the session yet): the next
  // customer must never see the last one's conversation.
  const PAGE_IDLE_MS = 5 * 60 * 1000;
  // A microphone left open by a stuck key or a lost pointer closes by itself (the kiosk also closes it when the
  // socket drops).
  const PTT_MAX_MS = 30000;
  const VOICE_STATES = ['off', 'idle', 'listening', 'thinking', 'speaking'];

  function wsUrl() {
    return `${location.protocol === 'https:' ? 'wss:' : 'ws:'}//${location.host}/ws`;
  }

  function connect() {
    clearTimeout(state.reconnectTimer);
    let ws;
    try {
      ws = new WebSocket(wsUrl());
    } catch (_) {
      scheduleReconnect();
      return;
    }
    state.ws = ws;
    ws.addEventListener('open', () => {
      if (state.ws !== ws) return;
      state.open = true;
      state.retry = 0;
      setConnStatus(null);
      // After a reconnect, re-attach to the live session so its "ended" and "staff" events reach this page
      // (the kiosk answers "ended" if the session expired meanwhile, and the page resets).
      if (state.session) ws.send(JSON.stringify({ type: 'resume', session: state.session }));
      const queued = state.outbox.splice(0);
      for (const frame of queued) ws.send(frame);
    });
    ws.addEventListener('message', (ev) => {
      if (state.ws !== ws) return;
      let msg;
      try { msg = JSON.parse(ev.data); } catch (_) { return; }
      if (msg && typeof msg === 'object') handleMessage(msg);
    });
    ws.addEventListener('close', () => {
      if (state.ws !== ws) return;
      state.ws = null;
      state.open = false;
      // A session id survives the reconnect; a start that was in flight must be asked again.
      if (state.starting) { state.starting = false; if (state.afterSession.length) requestSession(); }
      if (state.ptt) setPtt(null, false); // the kiosk releases the microphone of a dropped socket itself
      setConnStatus(state.retry === 0 ? 'reconnecting' : 'offline', 700);
      scheduleReconnect();
    });
  }

  function scheduleReconnect() {
    clearTimeout(state.reconnectTimer);
    const base = Math.min(10000, 400 * 2 ** state.retry);
    state.retry += 1;
    state.reconnectTimer = setTimeout(connect, base * (0.8 + Math.random() * 0.4));
  }

  /** Shows (after `delayMs`, so a quick reconnect never flickers) or hides the small connection pill. */
  function setConnStatus(kind, delayMs) {
    clearTimeout(state.connStatusTimer);
    const pill = $('conn');
    if (!kind) {
      pill.hidden = true;
      document.body.classList.remove('is-offline');
      return;
    }
    state.connStatusTimer = setTimeout(() => {
      $('conn-text').textContent = t(kind === 'connecting' ? 'status.connecting' : kind === 'offline' ? 'status.offline' : 'status.reconnecting');
      pill.hidden = false;
      document.body.classList.add('is-offline');
    }, delayMs || 0);
  }

  function send(obj) {
    const frame = JSON.stringify(obj);
    if (state.ws && state.open && state.ws.readyState === WebSocket.OPEN) {
      state.ws.send(frame);
    } else {
      // Sent as soon as the (re)connect loop opens a socket.
      if (state.outbox.length >= OUTBOX_MAX) state.outbox.shift();
      state.outbox.push(frame);
    }
  }

  /** Sends now or not at all. Voice actions are never queued: a press replayed after a reconnect would open the
   * kiosk's microphone when nobody is holding the button. */
  function sendLive(obj) {
    if (!(state.ws && state.open && state.ws.readyState === WebSocket.OPEN)) return false;
    state.ws.send(JSON.stringify(obj));
    return true;
  }

  function requestSession() {
    if (state.starting) return;
    state.starting = true;
    send({ type: 'start' });
  }

  /** Runs fn(sessionId) now, or once the kiosk has answered a start. */
  function withSession(fn) {
    if (state.session) { fn(state.session); return; }
    state.afterSession.push(fn);
    requestSession();
  }

  // ------------------------------------------------------------------ incoming messages

  function handleMessage(msg) {
    if (msg.type !== 'voice_state' && msg.type !== 'wake') touchIdle(); // the kiosk's voice state is not this customer doing anything
    const sameSession = !msg.session || !state.session || msg.session === state.session;
    switch (msg.type) {
      case 'session': {
        if (typeof msg.session !== 'string' || !msg.session) return;
        state.session = msg.session;
        state.starting = false;
        const store = msg.store && typeof msg.store === 'object' ? str(msg.store.name) : str(msg.store);
        if (store) setStoreName(store);
        if (state.view !== 'conversation') showConversation(false);
        const pending = state.afterSession.splice(0);
        for (const fn of pending) fn(state.session);
        break;
      }
      case 'reply': {
        if (!sameSession) return;
        const r = msg.reply && typeof msg.reply === 'object' ? msg.reply : msg; // tolerate a nested Reply too
        const cards = Array.isArray(r.cards) ? r.cards : [];
        const wasStaff = !!state.lastTurn && state.lastTurn.kind === 'staff';
        if (msg.channel === 'voice') {
          // A spoken turn: its question is already on screen (the final caption); a typed turn may still be
          // waiting for its own answer, so its bookkeeping is left alone.
          setCaption('', false);
        } else if (msg.channel === 'camera') {
          // A scan: show what the camera took it for on the customer's side, like a question they asked.
          if (state.view !== 'conversation') showConversation(false);
          const seen = msg.sighting && typeof msg.sighting === 'object' ? msg.sighting : {};
          const label = str(seen.label);
          addCustomerMessage(seen.kind === 'product' && label ? t('camera.product', { label })
            : seen.kind === 'order' ? t('camera.order') : t('camera.code'));
        } else {
          setWaiting(false);
          state.lastTurn = null;
          state.resent = false;
        }
        if (state.view !== 'conversation') showConversation(false);
        addKioskMessage(str(r.reply), cards);
        setQuickReplies(Array.isArray(r.quick_replies) ? r.quick_replies : []);
        // A hand-off answer carries a staff card: its text is what the banner shows, prominently.
        const staffCard = cards.find((c) => c && typeof c === 'object' && c.type === 'staff');
        if (staffCard) showStaffBanner(str(staffCard.text) || t('staff.coming'), false);
        else if (wasStaff && $('staff-banner').classList.contains('is-pending')) $('staff-banner').hidden = true;
        break;
      }
      case 'staff': {
        if (!sameSession) return;
        if (state.lastTurn && state.lastTurn.kind === 'staff') { state.lastTurn = null; setWaiting(false); }
        showStaffBanner(str(msg.text) || t('staff.coming'), false);
        break;
      }
      case 'ended': {
        if (!sameSession) return;
        showAttract();
        break;
      }
      case 'wake': {
        // A face at the kiosk or a code held up on the attract screen: start a conversation (which attaches the
        // camera to it, so a waiting scan is answered at once).
        if (state.view !== 'conversation') start(false);
        break;
      }
      case 'voice_state': {
        setVoiceState(msg);
        break;
      }
      case 'caption': {
        if (!sameSession) return;
        const text = str(msg.text);
        const heard = !!text && !/^[.…\s]+$/.test(text); // "…" only says that speech started
        if (!msg.final) { setCaption(heard ? text : '', false); break; }
        setCaption(heard ? text : '', true);
        if (!heard) break;
        if (state.view !== 'conversation') showConversation(false);
        addCustomerMessage(text);
        setQuickReplies([]);
        break;
      }
      case 'error': {
        const code = str(msg.code);
        if (code === 'voice_off' || code === 'voice_failed' || code === 'bad_action') {
          // Only the microphone failed: a typed question still waiting for its answer keeps waiting.
          if (state.ptt) setPtt(null, false);
          if (code === 'voice_off') setVoiceState({ state: 'off' });
          addNotice(code === 'voice_off' ? t('voice.unavailable') : str(msg.message));
          break;
        }
        setWaiting(false);
        if (/session/i.test(code) && state.session) {
          // The kiosk no longer knows our session (it restarted, or the session timed out): start a fresh one
          // and re-send the turn once, so the customer does not have to repeat themselves.
          state.session = null;
          const turn = state.lastTurn;
          if (turn && !state.resent) {
            state.resent = true;
            setWaiting(turn.kind === 'text');
            withSession((sid) => sendTurn(sid, turn));
            return;
          }
        }
        const pending = $('staff-banner');
        if (pending.classList.contains('is-pending')) pending.hidden = true;
        state.lastTurn = null;
        addNotice(str(msg.message));
        break;
      }
      default:
        break; // unknown message types are ignored
    }
  }

  // ------------------------------------------------------------------ views

  /** The kiosk may name its store (a `store` field on the session message); the attract screen greets with it. */
  function setStoreName(name) {
    const node = $('attract-store');
    node.removeAttribute('data-i18n');
    node.textContent = t('store.welcome', { store: name });
  }

  function touchIdle() {
    clearTimeout(state.idleTimer);
    if (state.view !== 'conversation') return;
    state.idleTimer = setTimeout(() => {
      if (state.view !== 'conversation') return;
      if (state.session) send({ type: 'end', session: state.session });
      showAttract();
    }, PAGE_IDLE_MS);
  }

  function showConversation(focusInput) {
    state.view = 'conversation';
    document.body.classList.remove('is-attract');
    document.body.classList.add('is-conversation');
    $('attract').hidden = true;
    $('conversation').hidden = false;
    $('done-button').hidden = false;
    $('attract-hint').hidden = true;
    touchIdle();
    if (focusInput) $('composer-input').focus();
  }

  /** Back to the attract screen; forgets everything the last customer saw. */
  function showAttract() {
    const hadFocus = document.activeElement && document.activeElement !== document.body;
    clearTimeout(state.endTimer);
    clearTimeout(state.idleTimer);
    setWaiting(false);
    state.session = null;
    state.starting = false;
    state.afterSession = [];
    state.lastTurn = null;
    state.resent = false;
    state.view = 'attract';
    $('log').replaceChildren();
    $('announcer').textContent = '';
    if (state.ptt) setPtt(null, true);
    setCaption('', false);
    $('empty').hidden = false;
    setQuickReplies([]);
    $('staff-banner').hidden = true;
    $('composer-input').value = '';
    $('conversation').hidden = true;
    $('done-button').hidden = true;
    $('attract-hint').hidden = false;
    $('attract').hidden = false;
    document.body.classList.remove('is-conversation');
    document.body.classList.add('is-attract');
    $('log-scroller').scrollTop = 0;
    if (hadFocus) $('start-button').focus();
  }

  function setWaiting(on) {
    clearTimeout(state.waitTimer);
    state.waiting = !!on;
    $('typing').hidden = !on;
    if (on) {
      scrollToEnd();
      state.waitTimer = setTimeout(() => {
        if (!state.waiting) return;
        setWaiting(false);
        addNotice(t('error.timeout'), true);
      }, REPLY_TIMEOUT_MS);
    }
  }

  function showStaffBanner(text, pending) {
    const banner = $('staff-banner');
    $('staff-banner-text').textContent = text;
    banner.classList.toggle('is-pending', !!pending);
    banner.hidden = false;
  }

  function scrollToEnd(node) {
    const sc = $('log-scroller');
    requestAnimationFrame(() => {
      const behavior = reducedMotion() ? 'auto' : 'smooth';
      let top = sc.scrollHeight;
      // A tall answer (several cards) is shown from its start, not its end.
      if (node && node.offsetHeight > sc.clientHeight * 0.8) top = node.offsetTop - 16;
      sc.scrollTo({ top, behavior });
    });
  }

  function announce(text) {
    const live = $('announcer');
    live.textContent = '';
    // A fresh text node a tick later, so screen readers announce repeated identical replies too.
    setTimeout(() => { live.textContent = text; }, 60);
  }

  // ------------------------------------------------------------------ messages

  function appendMessage(li) {
    $('empty').hidden = true;
    $('log').append(li);
    scrollToEnd(li);
  }

  function addCustomerMessage(text) {
    const li = el('li', { class: 'msg msg-customer' },
      el('div', { class: 'msg-body' },
        el('p', { class: 'bubble' }, el('span', { class: 'visually-hidden' }, `${t('role.you')}: `), text)));
    appendMessage(li);
  }

  function addKioskMessage(text, cards) {
    const body = el('div', { class: 'msg-body' });
    if (text) body.append(el('p', { class: 'bubble' }, el('span', { class: 'visually-hidden' }, `${t('role.kiosk')}: `), text));
    const rendered = [];
    for (const card of cards) {
      const node = renderCard(card);
      if (node) rendered.push(node);
    }
    if (rendered.length) body.append(el('div', { class: 'cards' }, ...rendered));
    if (!body.childNodes.length) return;
    const li = el('li', { class: 'msg msg-kiosk' }, el('span', { class: 'avatar', 'aria-hidden': 'true' }, icon('chat')), body);
    appendMessage(li);
    const summary = [text, ...rendered.map((n) => n.dataset.summary || '')].filter(Boolean).join('. ');
    announce(summary);
  }

  function addNotice(detail, detailIsLead) {
    const bubble = el('p', { class: 'bubble' });
    if (detailIsLead) {
      bubble.append(detail);
    } else {
      bubble.append(t('error.lead'));
      bubble.append(el('span', { class: 'notice-detail' }, detail || t('error.retry')));
    }
    const li = el('li', { class: 'msg msg-kiosk msg-notice' },
      el('span', { class: 'avatar', 'aria-hidden': 'true' }, icon('info')), el('div', { class: 'msg-body' }, bubble));
    if (state.view !== 'conversation') return; // nothing to say on the attract screen
    appendMessage(li);
    announce(bubble.textContent);
  }

  // ------------------------------------------------------------------ cards

  function sourceLine(card) {
    const src = str(card.source);
    return src ? el('p', { class: 'card-source' }, t('card.source', { source: src })) : null;
  }

  function sameOriginUrl(u) {
    const s = str(u);
    if (!s) return null;
    if (/^data:image\//i.test(s)) return s;
    try {
      const url = new URL(s, location.href);
      return url.origin === location.origin ? url.href : null; // the kiosk never fetches anything off-box
    } catch (_) {
      return null;
    }
  }

  function formatPrice(price, currency) {
    const n = typeof price === 'string' && price.trim() !== '' ? Number(price) : price;
    if (typeof n !== 'number' || !Number.isFinite(n)) return '';
    const cur = str(currency).toUpperCase();
    if (cur) {
      try {
        return new Intl.NumberFormat(t('lang') || 'en', { style: 'currency', currency: cur }).format(n);
      } catch (_) { /* unknown currency code */ }
      return `${n.toFixed(2)} ${cur}`;
    }
    return n.toFixed(2);
  }

  function formatDate(value) {
    const s = str(value);
    const m = /^(\d{4})-(\d{2})-(\d{2})$/.exec(s);
    if (!m) return s;
    try {
      const d = new Date(Date.UTC(Number(m[1]), Number(m[2]) - 1, Number(m[3])));
      return new Intl.DateTimeFormat(t('lang') || 'en', { dateStyle: 'medium', timeZone: 'UTC' }).format(d);
    } catch (_) {
      return s;
    }
  }

  function statusLabel(status) {
    const s = str(status);
    const known = t(`order.status.${s.toLowerCase()}`);
    if (known && known !== `order.status.${s.toLowerCase()}`) return known;
    return s ? s.charAt(0).toUpperCase() + s.slice(1).replace(/_/g, ' ') : '';
  }

  /** "each" → "each"; "kg" → "/ kg" (strings card.unit.each and card.unit). */
  function unitLabel(unit) {
    const u = str(unit);
    if (!u) return '';
    return u.toLowerCase() === 'each' ? t('card.unit.each') : t('card.unit', { unit: u });
  }

  function productMedia(card, name) {
    const box = el('div', { class: 'product-media' });
    const missing = () => {
      box.classList.add('is-missing');
      box.replaceChildren(icon('image'), el('span', { class: 'visually-hidden' }, t('card.image.missing')));
    };
    const src = sameOriginUrl(card.image);
    if (!src) { missing(); return box; }
    const img = el('img', { alt: name, loading: 'lazy', decoding: 'async', draggable: 'false' });
    img.addEventListener('error', missing, { once: true });
    img.src = src;
    box.append(img);
    return box;
  }

  const CARD_RENDERERS = {
    product(card) {
      const name = str(card.name) || str(card.id);
      if (!name) return null;
      const price = formatPrice(card.price, card.currency);
      const aisle = str(card.aisle);
      const tags = Array.isArray(card.tags) ? card.tags.map(str).filter(Boolean) : [];
      const row = el('div', { class: 'product-row' },
        price ? el('span', { class: 'price' }, el('span', { class: 'visually-hidden' }, `${t('card.price')}: `), price,
          unitLabel(card.unit) ? el('span', { class: 'unit' }, unitLabel(card.unit)) : null) : null,
        aisle ? el('span', { class: 'aisle' }, icon('pin'), t('card.aisle', { aisle })) : null);
      const node = el('article', { class: 'card card-product', 'data-card': 'product' },
        productMedia(card, name),
        el('div', { class: 'card-main' },
          el('h3', {}, name),
          row.childNodes.length ? row : null,
          str(card.description) ? el('p', { class: 'product-desc' }, str(card.description)) : null,
          tags.length ? el('ul', { class: 'tags', 'aria-label': t('card.tags') }, ...tags.map((x) => el('li', { class: 'tag' }, x))) : null,
          sourceLine(card)));
      node.dataset.summary = [name, price, aisle ? t('card.aisle', { aisle }) : ''].filter(Boolean).join(', ');
      return node;
    },

    order(card) {
      const id = str(card.order_id);
      const status = statusLabel(card.status);
      const items = Array.isArray(card.items) ? card.items.map(str).filter(Boolean) : [];
      const eta = str(card.eta);
      const updated = str(card.updated);
      const node = el('article', { class: 'card card-order', 'data-card': 'order' },
        el('span', { class: 'card-kicker' }, icon('box'), t('card.order.kicker')),
        el('div', { class: 'order-head' },
          el('h3', {}, t('card.order', { order_id: id || '—' })),
          status ? el('span', { class: 'status' }, status) : null),
        (eta || updated) ? el('p', { class: 'order-facts' },
          eta ? el('span', { class: 'order-eta' }, t('card.order.eta', { eta: formatDate(eta) })) : null,
          updated ? el('span', {}, t('card.order.updated', { updated: formatDate(updated) })) : null) : null,
        items.length ? el('ul', { class: 'order-items', 'aria-label': t('card.order.items') }, ...items.map((x) => el('li', {}, x))) : null,
        sourceLine(card));
      node.dataset.summary = [t('card.order', { order_id: id }), status, eta ? t('card.order.eta', { eta: formatDate(eta) }) : '']
        .filter(Boolean).join(', ');
      return node;
    },

    info(card) {
      const title = str(card.title);
      const text = str(card.text);
      if (!title && !text) return null;
      const node = el('article', { class: 'card card-info', 'data-card': 'info' },
        el('span', { class: 'card-kicker' }, icon('info'), t('card.info')),
        title ? el('h3', {}, title) : null,
        text ? el('p', { class: 'card-text' }, text) : null,
        sourceLine(card));
      node.dataset.summary = title;
      return node;
    },

    staff(card) {
      const text = str(card.text) || t('staff.coming');
      const node = el('article', { class: 'card card-staff', 'data-card': 'staff' },
        el('span', { class: 'card-kicker' }, icon('person'), t('card.staff')),
        el('p', { class: 'card-text' }, text),
        sourceLine(card));
      node.dataset.summary = text;
      return node;
    },
  };

  /** A card element, or null for anything this page does not know how to show (never a broken card). */
  function renderCard(card) {
    if (!card || typeof card !== 'object') return null;
    const render = Object.prototype.hasOwnProperty.call(CARD_RENDERERS, card.type) ? CARD_RENDERERS[card.type] : null;
    if (!render) return null;
    try {
      return render(card);
    } catch (err) {
      console.warn('storeclerk: card not shown:', err && err.message);
      return null;
    }
  }

  // ------------------------------------------------------------------ chips

  function chipButton(label, text) {
    const b = el('button', { type: 'button', class: 'chip' }, label);
    b.addEventListener('click', () => sendText(text, label));
    return b;
  }

  function validChips(list) {
    if (!Array.isArray(list)) return [];
    return list
      .map((q) => (q && typeof q === 'object' ? { label: str(q.label) || str(q.text), text: str(q.text) || str(q.label) } : null))
      .filter((q) => q && q.text)
      .slice(0, 8);
  }

  function setQuickReplies(list) {
    const box = $('quick-replies');
    const chips = validChips(list);
    box.replaceChildren(...chips.map((q) => chipButton(q.label, q.text)));
    box.hidden = chips.length === 0;
  }

  function renderSuggestions() {
    const chips = validChips(t('suggestions'));
    $('suggestions').replaceChildren(...chips.map((q) => chipButton(q.label, q.text)));
  }

  // ------------------------------------------------------------------ voice

  /** The kiosk's voice_state: shows or hides every voice control and says what the kiosk is doing. */
  function setVoiceState(msg) {
    const v = state.voice;
    v.state = VOICE_STATES.includes(msg.state) ? msg.state : 'off';
    v.muted = !!msg.muted;
    v.mode = msg.mode === 'open' ? 'open' : 'ptt';
    if (v.state === 'off' && state.ptt) setPtt(null, false);
    if (v.state === 'listening' && !$('caption').classList.contains('is-partial')) setCaption('', false); // a new utterance
    renderVoice();
  }

  function renderVoice() {
    const v = state.voice;
    const off = v.state === 'off';
    const mic = $('mic-button');
    const mute = $('voice-mute');
    mic.hidden = off;
    mic.disabled = off;
    mic.setAttribute('aria-pressed', String(!!state.ptt));
    mic.classList.toggle('is-live', !!state.ptt || v.state === 'listening');
    mute.hidden = off;
    mute.disabled = off;
    mute.setAttribute('aria-pressed', String(v.muted));
    const bar = $('voice-bar');
    bar.hidden = off;
    bar.dataset.state = v.state;
    const label = {
      idle: v.mode === 'open' ? t('voice.idle.open') : t('voice.idle.ptt'),
      listening: t('voice.listening'),
      thinking: t('voice.thinking'),
      speaking: t('voice.speaking'),
    }[v.state] || '';
    const text = $('voice-status-text');
    if (text.textContent !== label) text.textContent = label; // an unchanged status is not announced again
    const name = { thinking: 'dots', speaking: v.muted ? 'speaker-off' : 'speaker' }[v.state] || 'mic';
    const box = $('voice-icon');
    if (box.dataset.icon !== name) { box.dataset.icon = name; box.replaceChildren(icon(name)); }
  }

  /** The caption line: what the customer is saying (partial, live) or said (final). */
  function setCaption(text, final) {
    const line = $('caption');
    $('caption-text').textContent = text;
    line.hidden = !text;
    line.classList.toggle('is-partial', !!text && !final);
    line.classList.toggle('is-final', !!text && !!final);
  }

  /** Holds (how = 'pointer' | 'toggle') or releases (how = null) the microphone; `tell` sends it to the kiosk. */
  function setPtt(how, tell) {
    const was = state.ptt;
    if (how && state.voice.state === 'off') how = null;
    if (tell && !!was !== !!how) {
      const msg = { type: 'voice', action: how ? 'ptt_start' : 'ptt_stop' };
      if (state.session) msg.session = state.session;
      if (!sendLive(msg) && how) how = null;
    }
    clearTimeout(state.pttTimer);
    state.ptt = how;
    if (how) state.pttTimer = setTimeout(() => setPtt(null, true), PTT_MAX_MS);
    renderVoice();
  }

  function toggleMute() {
    if (state.voice.state === 'off') return;
    const muted = !state.voice.muted;
    if (!sendLive({ type: 'voice', action: muted ? 'mute' : 'unmute' })) return;
    state.voice.muted = muted; // shown at once; the kiosk's voice_state confirms (or corrects) it
    renderVoice();
  }

  function wireVoice() {
    const mic = $('mic-button');
    mic.addEventListener('pointerdown', (ev) => {
      if (ev.button !== 0 || state.voice.state === 'off') return;
      ev.preventDefault(); // keeps the focus (and the on-screen keyboard) where it was
      if (state.ptt === 'toggle') { setPtt(null, true); return; } // a touch ends what the keyboard started
      try { mic.setPointerCapture(ev.pointerId); } catch (_) { /* synthetic pointers have nothing to capture */ }
      if (!state.ptt) setPtt('pointer', true);
    });
    const release = () => { if (state.ptt === 'pointer') setPtt(null, true); };
    for (const type of ['pointerup', 'pointercancel', 'lostpointercapture']) mic.addEventListener(type, release);
    // Enter / Space (and a screen reader's activation) arrive as a click with detail 0: one press starts, the
    // next stops. A pointer's own click (detail >= 1) was already handled as press-and-hold above.
    mic.addEventListener('click', (ev) => {
      if (!viaKeyboard(ev)) return;
      setPtt(state.ptt ? null : 'toggle', true);
    });
    mic.addEventListener('keydown', (ev) => {
      if (ev.key === 'Enter' && ev.repeat) ev.preventDefault(); // a held Enter must not flicker the microphone
      if (ev.key === 'Escape' && state.ptt) setPtt(null, true);
    });
    $('voice-mute').addEventListener('click', toggleMute);
  }

  // ------------------------------------------------------------------ actions

  function sendTurn(sid, turn) {
    if (turn.kind === 'text') send({ type: 'text', session: sid, text: turn.text });
    else if (turn.kind === 'staff') send({ type: 'staff', session: sid });
  }

  function sendText(text, shown) {
    const clean = str(text);
    if (!clean) return;
    if (state.view !== 'conversation') showConversation(false);
    addCustomerMessage(str(shown) || clean);
    setQuickReplies([]);
    setWaiting(true);
    const turn = { kind: 'text', text: clean };
    state.lastTurn = turn;
    state.resent = false;
    withSession((sid) => sendTurn(sid, turn));
  }

  function start(fromKeyboard) {
    showConversation(fromKeyboard);
    if (!fromKeyboard && document.activeElement && document.activeElement !== document.body) document.activeElement.blur();
    withSession(() => {});
  }

  function callStaff() {
    if (state.view !== 'conversation') showConversation(false);
    showStaffBanner(t('staff.calling'), true);
    setWaiting(true);
    const turn = { kind: 'staff' };
    state.lastTurn = turn;
    state.resent = false;
    withSession((sid) => sendTurn(sid, turn));
  }

  function done() {
    if (!state.session) { showAttract(); return; }
    send({ type: 'end', session: state.session });
    // The kiosk answers with "ended"; if it cannot (connection down), the page resets on its own.
    clearTimeout(state.endTimer);
    state.endTimer = setTimeout(() => { if (state.view === 'conversation') showAttract(); }, 2500);
  }

  // A pointer click has detail >= 1; Enter/Space on a focused button gives detail 0.
  const viaKeyboard = (ev) => ev.detail === 0;

  function wire() {
    $('start-button').addEventListener('click', (ev) => start(viaKeyboard(ev)));
    $('staff-button').addEventListener('click', callStaff);
    $('done-button').addEventListener('click', done);
    wireVoice();
    $('contrast-toggle').addEventListener('click', () => {
      setContrast(document.documentElement.dataset.contrast !== 'high', true);
    });
    for (const b of document.querySelectorAll('[data-font-level]')) {
      b.addEventListener('click', () => setFontLevel(b.dataset.fontLevel, true));
    }
    $('composer').addEventListener('submit', (ev) => {
      ev.preventDefault();
      const input = $('composer-input');
      const text = input.value;
      if (!str(text)) { input.focus(); return; }
      input.value = '';
      sendText(text);
    });
    // Escape clears the text box; it is the only keyboard shortcut.
    $('composer-input').addEventListener('keydown', (ev) => {
      if (ev.key === 'Escape') ev.target.value = '';
    });
    for (const type of ['pointerdown', 'keydown', 'input']) document.addEventListener(type, touchIdle, { passive: true });
    // Touch-screen hygiene: no long-press menus, no pinch or double-tap zoom.
    document.addEventListener('contextmenu', (ev) => {
      if (!(ev.target instanceof HTMLInputElement)) ev.preventDefault();
    });
    document.addEventListener('gesturestart', (ev) => ev.preventDefault());
    document.addEventListener('touchmove', (ev) => { if (ev.touches && ev.touches.length > 1) ev.preventDefault(); }, { passive: false });
    document.addEventListener('dragstart', (ev) => ev.preventDefault());
  }

  async function main() {
    restorePrefs();
    wire();
    connect();
    await loadStrings();
    applyStrings();
    document.body.dataset.ready = 'true';
  }

  // For the browser tests and a technician's devtools only; the page itself never uses it.
  window.storeclerk = Object.freeze({
    strings: () => ({ ...strings }),
    fallbackStrings: () => ({ ...FALLBACK_STRINGS }),
    state: () => ({ session: state.session, view: state.view, open: state.open, waiting: state.waiting,
                    voice: { ...state.voice }, ptt: state.ptt }),
    /** Handle a kiosk → page message as if it came over the socket. */
    receive: (msg) => handleMessage(msg),
    /** Drop the socket as a network failure would (the page reconnects by itself). */
    dropConnection: () => { if (state.ws) state.ws.close(); },
  });

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', main);
  else main();
})();
