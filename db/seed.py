"""A realistic synthetic shop: customers, products, orders and behaviour, bulk-loaded with COPY.

    result = await seed_shop(dsn, shop_id="s1", customers=100_000)

The model, per customer of the shop (all times before `now`, within ~400 days):

* identity (nick, phone number, e-mail address, chat id, locale) is derived
  from the platform-wide consumer_id alone, so a consumer shared by two shops
  has the same phone and chat id in both; whether the shop *has* the contact,
  and the opt-outs, are drawn per shop;
* ~60% bought in the last 400 days. A buyer has a favourite category; repeat
  buyers come back for it roughly every repurchase cycle of the category
  (face mask 30 days ... perfume 180) with noise and a chance to churn;
* every order is preceded by a visit (and often a cart, sometimes a
  favourite, inquiry or coupon claim); buyers who are due again browse around
  the predicted repurchase day; on top come background logins, visits, message
  reads and live views, more of them for active customers and fans;
* ~61% of the customers are "active" (a visit or live view in the last 90
  days); the rest are dormant and have no visit or live view in that window.
  About 42% of all customers end up in the `oldcust_valid` audience (an order
  within 365 days and a visit / live view within 90), ~12% inquired in the
  last 30 days; ~7 events and ~1.5 orders (~1.4 items each) per customer;
* order_items.price is the unit price: orders.amount = sum(quantity * price);
* times of day follow a Chinese e-commerce day (quiet at night, peaks at lunch
  and 20-23h) in the shop's timezone, using its UTC offset at `now`.

Everything comes from one random.Random, seeded from (seed, shop_id), so a run
is reproducible; customers are generated and COPYed 50,000 at a time, so memory
stays bounded at a million customers. The whole seed is one transaction under
an advisory lock (ids are allocated from max(id) + 1, so concurrent seeds must
not interleave); a failed seed leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import asyncpg

CHUNK = 50_000
HISTORY_DAYS = 400
DAY = 86_400
_LOCK_KEY = 0x51_1C_E5_EE  # pg_advisory_xact_lock key: one seed at a time per database

# fmt: off
SC_COLUMNS = [
    "shop_id", "consumer_id", "nick", "phone", "email", "chat_id", "phone_valid", "email_valid", "locale",
    "timezone", "is_member", "is_fan", "blacklisted", "deleted", "unsub_chat", "unsub_sms", "unsub_email",
    "unsub_inbox", "created_at",
]
# fmt: on
ORDER_COLUMNS = ["order_id", "shop_id", "consumer_id", "created_at", "paid_at", "amount", "status"]
ITEM_COLUMNS = ["order_id", "product_id", "quantity", "price"]
EVENT_COLUMNS = ["shop_id", "consumer_id", "kind", "product_id", "occurred_at"]
PRODUCT_COLUMNS = ["product_id", "shop_id", "title", "category", "price", "repurchase_cycle_days", "on_shelf"]
# fmt: off
SEEDED_TABLES = [
    "shops", "consumers", "shop_customers", "products", "orders", "order_items", "behaviour_events",
    "coupons",
]
# fmt: on


@dataclass
class SeedResult:
    shop_id: str
    customers: int
    orders: int
    order_items: int
    events: int
    products: int
    coupons: int
    seconds: float


# --- catalogues ------------------------------------------------------------------------------
# category -> (repurchase cycle in days, price range in yuan, share of buyers, product nouns)
CATALOGUES: dict[str, dict[str, tuple[int, tuple[int, int], float, tuple[str, ...]]]] = {
    "beauty": {
        "face_mask": (30, (39, 199), 0.16, ("玻尿酸补水面膜", "清洁泥膜", "睡眠面膜", "修护贴片面膜")),
        "shampoo": (45, (39, 129), 0.10, ("控油洗发水", "氨基酸洗发水", "防脱洗发露")),
        "body_wash": (45, (29, 99), 0.07, ("香氛沐浴露", "烟酰胺沐浴乳")),
        "cleanser": (60, (49, 259), 0.12, ("氨基酸洁面乳", "洁面慕斯", "控油洗面奶")),
        "sunscreen": (60, (89, 329), 0.07, ("清透防晒霜", "防晒喷雾", "隔离防晒乳")),
        "makeup_remover": (60, (59, 199), 0.05, ("卸妆油", "卸妆水", "卸妆膏")),
        "toner": (75, (89, 399), 0.08, ("保湿爽肤水", "精华水", "湿敷水")),
        "serum": (90, (199, 899), 0.10, ("小棕瓶精华", "VC精华液", "抗老精华")),
        "face_cream": (90, (159, 699), 0.08, ("修护面霜", "保湿乳霜", "紧致面霜")),
        "eye_cream": (120, (199, 799), 0.04, ("淡纹眼霜", "眼部精华")),
        "lipstick": (120, (129, 399), 0.07, ("丝绒唇釉", "哑光口红", "润唇膏")),
        "foundation": (150, (199, 599), 0.04, ("持妆粉底液", "气垫BB", "遮瑕膏")),
        "perfume": (180, (299, 1299), 0.02, ("淡香水", "浓香水", "香水小样套装")),
    },
    "food": {
        "milk": (10, (49, 99), 0.15, ("纯牛奶整箱", "酸奶", "低脂牛奶")),
        "snacks": (15, (19, 79), 0.20, ("坚果零食礼包", "牛肉干", "海苔脆")),
        "coffee": (20, (39, 159), 0.15, ("挂耳咖啡", "冻干咖啡粉", "咖啡豆")),
        "nuts": (30, (49, 199), 0.15, ("每日坚果", "碧根果", "夏威夷果")),
        "rice_oil": (30, (59, 199), 0.15, ("东北大米", "花生油", "五常稻花香")),
        "tea": (45, (59, 599), 0.20, ("龙井绿茶", "普洱茶饼", "花果茶")),
    },
    "pet": {
        "cat_litter": (20, (39, 129), 0.20, ("豆腐猫砂", "膨润土猫砂", "混合猫砂")),
        "pet_treats": (20, (19, 89), 0.15, ("冻干零食", "猫条", "磨牙棒")),
        "cat_food": (30, (69, 399), 0.25, ("全价猫粮", "幼猫粮", "主食罐头")),
        "dog_food": (30, (79, 459), 0.20, ("全价狗粮", "小型犬粮", "鸡肉冻干粮")),
        "pet_care": (60, (29, 159), 0.10, ("宠物沐浴露", "驱虫滴剂", "洁牙水")),
        "pet_toys": (90, (9, 99), 0.10, ("逗猫棒", "耐咬玩具", "猫抓板")),
    },
    "baby": {
        "diapers": (15, (89, 259), 0.25, ("纸尿裤", "拉拉裤", "夜用纸尿裤")),
        "formula": (20, (199, 499), 0.20, ("婴儿奶粉", "有机奶粉", "较大婴儿配方奶粉")),
        "wipes": (20, (29, 89), 0.20, ("婴儿湿巾", "手口湿巾", "棉柔巾")),
        "baby_wash": (60, (49, 159), 0.15, ("婴儿洗发沐浴二合一", "婴儿润肤乳")),
        "baby_clothes": (90, (59, 299), 0.20, ("纯棉连体衣", "婴儿睡袋", "爬服")),
    },
    "apparel": {
        "socks": (90, (19, 69), 0.25, ("纯棉袜子", "船袜", "运动袜")),
        "underwear": (120, (49, 199), 0.25, ("无痕内衣", "纯棉内裤", "运动文胸")),
        "tshirt": (150, (59, 199), 0.25, ("纯棉T恤", "短袖POLO", "打底衫")),
        "trousers": (180, (129, 459), 0.15, ("直筒牛仔裤", "休闲长裤", "运动裤")),
        "outerwear": (365, (299, 1299), 0.10, ("羽绒服", "风衣", "夹克")),
    },
}
CATALOGUES["general"] = {
    k: v for name in ("beauty", "food", "pet") for k, v in list(CATALOGUES[name].items())[:4]
}  # an unknown industry gets a general store

_BRANDS = ("悦颜", "花漾", "初木", "南山", "溪谷", "云朵", "青禾", "暖阳", "拾光", "星河", "森屿", "柚见")
_SPECS = ("", "", " 家庭装", " 囤货装", " 礼盒装", " 旅行装", " 2件套", " 官方正品")
_SHOP_NAMES = {"beauty": "美妆", "food": "食品", "pet": "宠物", "baby": "母婴", "apparel": "服饰"}

# Hours of the day an e-commerce customer is active, as relative weights (local time).
_HOUR_WEIGHTS = (
    1.0,
    0.6,
    0.3,
    0.2,
    0.15,
    0.2,
    0.5,
    1.5,
    2.5,
    3.0,
    3.5,
    4.0,
    4.5,
    4.0,
    3.5,
    3.5,
    3.5,
    3.5,
    4.0,
    5.0,
    6.0,
    7.0,
    6.0,
    3.0,
)


def _lut(weighted: list[tuple[object, float]], size: int = 1000) -> tuple:
    """A lookup table: lut[int(random() * len(lut))] draws from the weights."""
    total = sum(w for _, w in weighted)
    out: list = []
    acc = 0.0
    for value, w in weighted:
        acc += w
        while len(out) < round(acc / total * size):
            out.append(value)
    return tuple(out)


_HOUR_LUT = _lut([(h * 3600, w) for h, w in enumerate(_HOUR_WEIGHTS)])
_QTY_LUT = _lut([(1, 80), (2, 15), (3, 5)], 100)
# kinds of background activity (active customers); dormant ones the same without recent dates
_BG_KIND_LUT = _lut(
    [
        ("login", 34),
        ("visit", 30),
        ("message_read", 14),
        ("live_view", 7),
        ("favourite", 6),
        ("coupon_claim", 5),
        ("cart", 4),
    ]
)
_BG_COUNT_ACTIVE = _lut([(0, 4), (1, 12), (2, 18), (3, 20), (4, 16), (5, 12), (6, 8), (8, 6), (11, 4)], 100)
_BG_COUNT_DORMANT = _lut([(0, 20), (1, 30), (2, 25), (3, 15), (4, 7), (6, 3)], 100)

# Identity pieces (derived from consumer_id only).
# fmt: off
_NICK_A = (
    "小", "甜", "大", "阿", "懒", "萌", "酷", "暖", "橙", "糖", "星", "月", "云", "风", "鹿", "猫", "momo", "lucky",
    "coco", "sunny", "kiki", "lily", "amy", "tina", "jojo", "nana", "yoyo", "mia", "陈", "王", "李", "张",
)
_NICK_B = (
    "兔兔", "小鱼", "奶茶", "橘子", "布丁", "饼干", "汤圆", "芒果", "西瓜", "樱桃", "可乐", "雪糕", "_爱美", "_shop", "酱",
    "宝贝",
    "姐姐", "不加糖", "的日常", "在路上", "呀", "_cn", "bear", "cat", "_2020", "同学", "先生", "女士", "丫头", "妹妹", "仙女",
    "本人",
)
_PINYIN = (
    "zhang", "wang", "li", "liu", "chen", "yang", "huang", "zhao", "wu", "zhou", "xu", "sun", "ma", "zhu",
    "hu", "guo", "he", "lin", "luo", "gao", "xiaoyu", "meimei", "lele", "tingting", "yiyi", "jia", "hui",
    "fang", "jing", "ying", "wei", "lan",
)
_MOBILE_PREFIX = (
    "130", "131", "132", "133", "135", "136", "137", "138", "139", "147", "150", "151", "152", "153",
    "155", "156", "157", "158", "159", "166", "173", "176", "177", "178", "180", "181", "182", "183",
    "185", "186", "187", "188", "189", "191", "198", "199",
)
# fmt: on
_MAIL_DOMAIN = ("qq.com",) * 8 + ("163.com",) * 3 + ("126.com", "sina.com", "outlook.com", "foxmail.com")
_FOREIGN_TZ = ("America/Los_Angeles", "America/New_York", "Europe/London", "Asia/Singapore")
_M64 = (1 << 64) - 1


def _identity(cid: int) -> int:
    """splitmix64 of the consumer id: the source of the consumer's platform identity."""
    h = (cid * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019) & _M64
    h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _M64
    return h ^ (h >> 31)


# --- generation ------------------------------------------------------------------------------


@dataclass
class _Product:
    product_id: int
    category: int
    cents: int
    price: Decimal


class _ShopGenerator:
    """Generates one shop's rows, a chunk of consumers at a time, from one Random."""

    def __init__(
        self,
        *,
        rng: random.Random,
        shop_id: str,
        now: datetime,
        tz: str,
        industry: str,
        product_base: int,
        n_products: int,
        order_base: int,
        channel_mix: bool,
    ):
        self.rng = rng
        self.shop_id = shop_id
        self.now_ts = now.timestamp()
        local_now = now.astimezone(ZoneInfo(tz))
        # midnight of the shop's today, as a Unix time (offset at `now`; DST drift is ignored)
        self.mid_ts = self.now_ts - (
            local_now.hour * 3600 + local_now.minute * 60 + local_now.second + local_now.microsecond / 1e6
        )
        self.channel_mix = channel_mix
        self.next_order_id = order_base + 1
        self._dec: dict[int, Decimal] = {}

        catalogue = CATALOGUES.get(industry, CATALOGUES["general"])
        self.cat_names = list(catalogue)
        self.cycles = [catalogue[c][0] for c in self.cat_names]
        # every category gets at least one product, the rest in proportion to its share
        shares = [catalogue[c][2] for c in self.cat_names]
        n_cat = len(self.cat_names)
        n_products = max(n_products, n_cat)
        counts = [1] * n_cat
        for _ in range(n_products - n_cat):
            counts[rng.choices(range(n_cat), shares)[0]] += 1
        self.products: list[_Product] = []
        self.product_rows: list[tuple] = []
        self.cat_products: list[list[_Product]] = [[] for _ in range(n_cat)]
        pid = product_base
        for ci, name in enumerate(self.cat_names):
            cycle, (lo, hi), _, nouns = catalogue[name]
            for _ in range(counts[ci]):
                pid += 1
                cents = rng.randrange(lo, hi + 1) * 100 - rng.choice((0, 0, 10, 20, 100))  # 59.00, 58.90 ...
                p = _Product(pid, ci, cents, self.dec(cents))
                self.products.append(p)
                self.cat_products[ci].append(p)
                title = f"{rng.choice(_BRANDS)}{rng.choice(nouns)}{rng.choice(_SPECS)}"
                on_shelf = rng.random() > 0.05
                self.product_rows.append((pid, shop_id, title, name, p.price, cycle, on_shelf))
        for plist in [self.products, *self.cat_products]:  # picks below are skewed to the head
            rng.shuffle(plist)
        self.cat_lut = _lut([(ci, s) for ci, s in enumerate(shares)])

    def dec(self, cents: int) -> Decimal:
        d = self._dec.get(cents)
        if d is None:
            d = self._dec[cents] = Decimal(cents).scaleb(-2)
        return d

    def chunk(self, lo: int, hi: int) -> tuple[list[tuple], list[tuple], list[tuple], list[tuple]]:
        """Rows for consumers lo..hi-1: (shop_customers, orders, order_items, behaviour_events)."""
        rng = self.rng
        r = rng.random
        shop_id = self.shop_id
        now_ts = self.now_ts
        mid_ts = self.mid_ts
        hour_lut = _HOUR_LUT
        n_hour = len(hour_lut)
        fromts = datetime.fromtimestamp
        utc = UTC
        mix = self.channel_mix
        cat_lut = self.cat_lut
        n_cat_lut = len(cat_lut)
        cat_products = self.cat_products
        cycles = self.cycles
        products = self.products
        n_products = len(products)
        qty_lut = _QTY_LUT
        bg_kind = _BG_KIND_LUT
        n_bg_kind = len(bg_kind)
        bg_active = _BG_COUNT_ACTIVE
        bg_dormant = _BG_COUNT_DORMANT
        dec = self.dec
        identity = _identity
        nick_a, nick_b, pinyin = _NICK_A, _NICK_B, _PINYIN
        prefixes, n_prefixes = _MOBILE_PREFIX, len(_MOBILE_PREFIX)
        domains, n_domains = _MAIL_DOMAIN, len(_MAIL_DOMAIN)
        foreign_tz = _FOREIGN_TZ
        hist = HISTORY_DAYS - 0.01

        def at(days_ago: float) -> float:
            """A Unix time on the local day `days_ago` days back, at a typical hour, before now."""
            t = mid_ts - int(days_ago) * DAY + hour_lut[int(r() * n_hour)] + r() * 3600.0
            if t >= now_ts:  # later today than now: anywhere between midnight and now
                t = mid_ts + (now_ts - 1.0 - mid_ts) * r()
            return t

        customers: list[tuple] = []
        orders: list[tuple] = []
        items: list[tuple] = []
        events: list[tuple] = []
        add_c, add_o, add_i, add_e = customers.append, orders.append, items.append, events.append
        oid = self.next_order_id

        for cid in range(lo, hi):
            # -- identity, from the consumer id alone
            h = identity(cid)
            nick = nick_a[h & 31] + nick_b[(h >> 5) & 31]
            if (h >> 10) & 3 == 0:
                nick += str((h >> 12) % 1000)
            phone = prefixes[(h >> 22) % n_prefixes] + f"{(h >> 28) % 100_000_000:08d}"
            domain = domains[(h >> 56) % n_domains]
            if domain == "qq.com":
                email = f"{10_000 + (h >> 20) % 3_000_000_000}@qq.com"
            else:
                email = f"{pinyin[(h >> 40) & 31]}{(h >> 45) % 10_000}@{domain}"
            foreign = (h >> 50) & 31 < 2  # ~6%
            locale = "en-US" if foreign else "zh-CN"
            ctz = None
            if foreign:
                if (h >> 55) & 1:
                    ctz = foreign_tz[(h >> 60) & 3]
            elif (h >> 55) & 63 == 0:
                ctz = "Asia/Shanghai"
            chat_id = f"tb_{cid}"

            # -- what this shop knows of the customer
            phone_valid = email_valid = True
            blacklisted = deleted = u_chat = u_sms = u_email = u_inbox = False
            if mix:
                x = r()
                if x < 0.05:
                    phone = None
                elif x < 0.08:
                    phone_valid = False
                    if x < 0.065:
                        phone = phone[:10]  # a malformed number
                x = r()
                if x < 0.30:
                    email = None
                elif x < 0.33:
                    email_valid = False
                    email = email.replace("@", "#") if x < 0.315 else email + ".bounce"
                if r() < 0.05:
                    chat_id = None
                x = r()
                if x < 0.005:
                    blacklisted = True
                elif x < 0.010:
                    deleted = True
                u_chat = r() < 0.02
                u_sms = r() < 0.05
                u_email = r() < 0.04
                u_inbox = r() < 0.01
            is_member = r() < 0.25
            is_fan = r() < (0.75 if is_member else 0.28)  # ~40% overall

            # -- when the customer joined: 18% within the history window, the rest before it
            joined = r() * HISTORY_DAYS if r() < 0.18 else HISTORY_DAYS + r() * 1100.0
            window = min(hist, joined)  # activity happens in [0, window] days ago
            created_ts = at(joined + 1.0)

            # -- orders
            buyer = r() < 0.60
            last_order = 1e9
            fav = None
            cycle = 0
            if buyer:
                ci = cat_lut[int(r() * n_cat_lut)]
                cycle = cycles[ci]
                plist = cat_products[ci]
                n_plist = len(plist)
                fav = plist[int(r() * r() * n_plist)]
                repeat = r() < 0.55
                d = window * (1.0 - r() * r()) if repeat else window * r()
                while True:
                    # one order on day d (days ago)
                    k = int(d)
                    t = at(d)
                    main = fav if r() < 0.75 else plist[int(r() * n_plist)]
                    q = qty_lut[int(r() * 100)]
                    cents = q * main.cents
                    add_i((oid, main.product_id, q, main.price))
                    main_id = main.product_id
                    if r() < 0.30:
                        extra = products[int(r() * r() * n_products)]
                        if extra.product_id != main_id:
                            q2 = qty_lut[int(r() * 100)]
                            cents += q2 * extra.cents
                            add_i((oid, extra.product_id, q2, extra.price))
                            if r() < 0.25:
                                extra2 = products[int(r() * n_products)]
                                if extra2.product_id != main_id and extra2.product_id != extra.product_id:
                                    cents += extra2.cents
                                    add_i((oid, extra2.product_id, 1, extra2.price))
                    created = fromts(t, utc)
                    if k <= 4 and r() < 0.3:
                        add_o((oid, shop_id, cid, created, None, dec(cents), "pending"))
                    else:
                        p = t + 15.0 + r() * 900.0
                        if p >= now_ts:
                            p = t + (now_ts - t) * 0.5
                        add_o(
                            (
                                oid,
                                shop_id,
                                cid,
                                created,
                                fromts(p, utc),
                                dec(cents),
                                "refunded" if r() < 0.03 else "paid",
                            )
                        )
                    oid += 1
                    # the browsing that led to it
                    v = t - 120.0 - r() * 7200.0
                    add_e((shop_id, cid, "visit", main_id, fromts(v, utc)))
                    if r() < 0.5:
                        add_e((shop_id, cid, "cart", main_id, fromts(v + (t - v) * r(), utc)))
                    if r() < 0.1:
                        add_e((shop_id, cid, "favourite", main_id, fromts(v + (t - v) * r(), utc)))
                    if r() < 0.12:
                        add_e((shop_id, cid, "inquiry", main_id, fromts(v + (t - v) * r(), utc)))
                    if r() < 0.15:
                        add_e((shop_id, cid, "coupon_claim", None, fromts(v + (t - v) * r(), utc)))
                    last_order = d
                    if not repeat:
                        break
                    d -= cycle * (0.7 + 0.6 * r())
                    if d <= 0.0 or r() < 0.12:
                        break

            # -- active (a visit or live view in the last 90 days) or dormant
            # (dormant ones keep a day's margin: day 90 back may still be inside 90 x 24 h)
            if last_order < 91.0 or window < 91.0:
                active = True
            else:
                active = r() < (0.50 if buyer else 0.40)
            recent = 0.0 if active else 91.0  # the most recent day background activity may fall on
            if active and (last_order >= 90.0 or r() < 0.5):
                d = 90.0 * r() ** 1.6
                if d > window:
                    d = window * r()
                add_e(
                    (shop_id, cid, "live_view" if is_fan and r() < 0.3 else "visit", None, fromts(at(d), utc))
                )

            # -- browsing around the day the next purchase is due
            if buyer:
                due = last_order - cycle * (0.85 + 0.3 * r())
                if active and -10.0 < due < 90.0:
                    base = max(0.0, due)
                    n = 1 + (r() < 0.6) + (r() < 0.3)
                    fid = fav.product_id
                    for _ in range(n):
                        d = base + r() * 6.0
                        if d < window:
                            t = at(d)
                            add_e((shop_id, cid, "visit", fid, fromts(t, utc)))
                            x = r()
                            if x < 0.25:
                                add_e((shop_id, cid, "favourite", fid, fromts(t + 60.0 * r(), utc)))
                            elif x < 0.45:
                                add_e((shop_id, cid, "cart", fid, fromts(t + 300.0 * r(), utc)))
                elif not active and 91.0 < due < window and r() < 0.5:  # due, looked, did not buy
                    add_e((shop_id, cid, "visit", fav.product_id, fromts(at(due), utc)))

            # -- background activity
            n = (bg_active if active else bg_dormant)[int(r() * 100)]
            span = window - recent
            if span > 0.0:
                for _ in range(n):
                    kind = bg_kind[int(r() * n_bg_kind)]
                    if kind == "visit" or kind == "favourite" or kind == "cart":
                        pid = products[int(r() * r() * n_products)].product_id if r() < 0.8 else None
                    else:
                        pid = None
                    add_e((shop_id, cid, kind, pid, fromts(at(recent + span * r()), utc)))
                if is_fan and r() < 0.5:
                    add_e((shop_id, cid, "live_view", None, fromts(at(recent + span * r()), utc)))

            # -- a recent chat consultation
            if r() < (0.15 if active else 0.03):
                pid = (
                    fav.product_id
                    if fav is not None and r() < 0.7
                    else products[int(r() * n_products)].product_id
                )
                d = r() * min(window, 30.0)
                add_e((shop_id, cid, "inquiry", pid, fromts(at(d), utc)))

            add_c(
                (
                    shop_id,
                    cid,
                    nick,
                    phone,
                    email,
                    chat_id,
                    phone_valid,
                    email_valid,
                    locale,
                    ctz,
                    is_member,
                    is_fan,
                    blacklisted,
                    deleted,
                    u_chat,
                    u_sms,
                    u_email,
                    u_inbox,
                    fromts(created_ts, utc),
                )
            )

        self.next_order_id = oid
        return customers, orders, items, events


# --- repurchase catalogue (K-REPURCHASE benchmark) ------------------------------------------
# seed_shop(..., repurchase=True) adds, on top of the shop above, a catalogue whose cycles the
# repurchase-cycle audience (R-RP-1) estimates from the orders (repurchase_cycle_days stays NULL),
# durables bought once that are commonly bought together with a consumable (cross-sell, R-RP-2),
# browsing of the consumables' categories, and exclusive coupons for three consumables.
# (key, title, category, price in yuan, true repurchase cycle in days or None for a durable)
REPURCHASE_CATALOGUE: tuple[tuple[str, str, str, int, int | None], ...] = (
    ("capsules", "悦颜 咖啡胶囊 50粒", "rp_coffee", 89, 30),
    ("beans", "南山 意式咖啡豆 1kg", "rp_coffee", 129, 45),
    ("water_filter", "溪谷 净水器滤芯", "rp_water", 199, 60),
    ("descaler", "溪谷 饮水机清洁片", "rp_water", 49, 50),
    ("laundry_pods", "云朵 洗衣凝珠 60颗", "rp_laundry", 59, 20),
    ("softener", "云朵 衣物柔顺剂", "rp_laundry", 39, 40),
    ("coffee_machine", "悦颜 胶囊咖啡机", "rp_coffee_machine", 899, None),
    ("water_purifier", "溪谷 厨下净水器", "rp_water_purifier", 1999, None),
    ("washer", "云朵 滚筒洗衣机", "rp_washer", 2999, None),
)
# durable -> the consumable commonly bought with it (in half of its baskets)
REPURCHASE_PAIRS = {"coffee_machine": "capsules", "water_purifier": "water_filter", "washer": "laundry_pods"}
# the consumables with an exclusive coupon (R-RP-10: only these are pushed)
REPURCHASE_COUPONS = {"capsules": "rp-capsules", "water_filter": "rp-water-filter", "laundry_pods": "rp-laundry-pods"}
REPURCHASE_COUPON_STOCK = 5_000_000  # ample: more than one unit per customer of a 1M shop
REPURCHASE_BUYERS = 0.5  # share of customers buying one consumable, 2-5 times about a cycle apart
REPURCHASE_BROWSERS = 0.75  # ... of whom this share browsed its category 3-5 times in the last 1-13 days
DURABLE_BUYERS = 0.12  # share of customers who bought a durable in the last 1-171 days


# A uniform draw in [0, 1) from a bigint and a salt (hashint8extended, 52 bits): reproducible, no
# random() state. A session-local SQL function (inlined by the planner), dropped after the seed.
_RP_UNIFORM = """
    CREATE FUNCTION pg_temp.rp_u(x bigint, salt int, seed bigint) RETURNS float8 LANGUAGE sql IMMUTABLE AS
    'SELECT (hashint8extended(x, salt + 1000 * seed) & 4503599627370495)::float8 / 4503599627370496.0'
"""


# The consumable buyers: product slot (0-5), purchases (2-5), the last one L days before now, L uniform
# in [1, 1 + 1.3 C] (so about 15% are due at 0.73 C +/- 0.1 C), whether they browse.
# $lo/$hi consumer range, $seed.
_RP_BUYERS = f"""
    CREATE TEMP TABLE rp_buyers ON COMMIT DROP AS
    SELECT g AS cid, floor(pg_temp.rp_u(g, 2, $seed) * 6)::int AS slot, 2 + floor(pg_temp.rp_u(g, 3, $seed) * 4)::int AS n,
           pg_temp.rp_u(g, 4, $seed) AS l, pg_temp.rp_u(g, 9, $seed) < {REPURCHASE_BROWSERS} AS browses
    FROM generate_series($lo::bigint, $hi::bigint) g
    WHERE pg_temp.rp_u(g, 1, $seed) < {REPURCHASE_BUYERS}
"""
# Purchase k (0 = the last) of a buyer: order id base + 1 + (cid - lo) * 8 + k, k days ago
# d_k = L + k C + 0.2 C (u - 0.5) for k >= 1: consecutive gaps of C +/- 20%, median C.
# $ids, $cycles, $prices: the consumables' arrays (slot + 1); $now, $shop, $base.
_RP_PURCHASES = """
    SELECT $base::bigint + 1 + (b.cid - $lo::bigint) * 8 + k AS order_id, b.cid, ($ids::bigint[])[b.slot + 1] AS product_id,
           ($prices::numeric[])[b.slot + 1] AS price,
           $now::timestamptz - make_interval(secs => 86400.0 * (1 + b.l * 1.3 * c.cycle + k * c.cycle
               + CASE WHEN k > 0 THEN 0.2 * c.cycle * (pg_temp.rp_u(b.cid * 8 + k, 10, $seed) - 0.5) ELSE 0 END)) AS at
    FROM rp_buyers b
    CROSS JOIN LATERAL (SELECT ($cycles::int[])[b.slot + 1]::float8 AS cycle) c
    CROSS JOIN LATERAL generate_series(0, b.n - 1) k
"""
# A durable bought D days ago (D in [1, 171]), half the time with its consumable in the same basket;
# order id base + 1 + (cid - lo) * 8 + 7. $dids, $dprices, $bids, $bprices: per durable slot (0-2).
_RP_DURABLES = f"""
    CREATE TEMP TABLE rp_durables ON COMMIT DROP AS
    SELECT $base::bigint + 1 + (g - $lo::bigint) * 8 + 7 AS order_id, g AS cid, s.slot,
           ($dids::bigint[])[s.slot + 1] AS product_id, ($dprices::numeric[])[s.slot + 1] AS price,
           ($bids::bigint[])[s.slot + 1] AS b_id, ($bprices::numeric[])[s.slot + 1] AS b_price,
           pg_temp.rp_u(g, 8, $seed) < 0.5 AS with_b,
           $now::timestamptz - make_interval(secs => 86400.0 * (1 + 170 * pg_temp.rp_u(g, 7, $seed))) AS at
    FROM generate_series($lo::bigint, $hi::bigint) g
    CROSS JOIN LATERAL (SELECT floor(pg_temp.rp_u(g, 6, $seed) * 3)::int AS slot) s
    WHERE pg_temp.rp_u(g, 5, $seed) < {DURABLE_BUYERS}
"""
_RP_ORDERS = f"""
    INSERT INTO orders (order_id, shop_id, consumer_id, created_at, paid_at, amount, status)
    SELECT p.order_id, $shop, p.cid, p.at, p.at + interval '5 minutes', p.price, 'paid' FROM ({_RP_PURCHASES}) p
    UNION ALL
    SELECT d.order_id, $shop, d.cid, d.at, d.at + interval '5 minutes',
           d.price + CASE WHEN d.with_b THEN d.b_price ELSE 0 END, 'paid' FROM rp_durables d
"""
_RP_ITEMS = f"""
    INSERT INTO order_items (order_id, product_id, quantity, price)
    SELECT p.order_id, p.product_id, 1, p.price FROM ({_RP_PURCHASES}) p
    UNION ALL SELECT d.order_id, d.product_id, 1, d.price FROM rp_durables d
    UNION ALL SELECT d.order_id, d.b_id, 1, d.b_price FROM rp_durables d WHERE d.with_b
"""
# Browsing: 3-5 visits of the bought consumable or its category sibling, 1-13 days before now (inside
# the audience's 14 days before the snapshot); half the durable buyers looked at the consumable that
# goes with it 1-2 times in the last 1-28 days. $sibs: each consumable slot's sibling product.
_RP_EVENTS = """
    INSERT INTO behaviour_events (shop_id, consumer_id, kind, product_id, occurred_at)
    SELECT $shop, b.cid, 'visit',
           CASE WHEN j % 2 = 0 THEN ($ids::bigint[])[b.slot + 1] ELSE ($sibs::bigint[])[b.slot + 1] END,
           $now::timestamptz - make_interval(secs => 86400.0 * (1 + 12 * pg_temp.rp_u(b.cid * 8 + j, 20, $seed)))
    FROM rp_buyers b CROSS JOIN LATERAL generate_series(0, 2 + floor(pg_temp.rp_u(b.cid, 11, $seed) * 3)::int) j
    WHERE b.browses
    UNION ALL
    SELECT $shop, d.cid, 'visit', d.b_id,
           $now::timestamptz - make_interval(secs => 86400.0 * (1 + 27 * pg_temp.rp_u(d.cid * 8 + j, 21, $seed)))
    FROM rp_durables d CROSS JOIN LATERAL generate_series(0, floor(pg_temp.rp_u(d.cid, 12, $seed) * 2)::int) j
    WHERE pg_temp.rp_u(d.cid, 13, $seed) < 0.5
"""


def _named(sql: str, names: list[str]) -> str:
    """$name -> $n in the order of `names` (the statements above read better with names)."""
    for name in sorted(names, key=len, reverse=True):
        sql = sql.replace(f"${name}", f"${names.index(name) + 1}")
    return sql


_RP_PARAMS = ["lo", "hi", "seed", "base", "ids", "cycles", "prices", "now", "shop", "dids", "dprices", "bids", "bprices",
              "sibs"]


async def _seed_repurchase(conn, *, shop_id: str, lo: int, hi: int, now: datetime, seed: int) -> tuple[int, int, int, int, int]:
    """The repurchase catalogue, its orders, browsing and coupons for consumers lo..hi (inclusive), in
    set-based statements over generate_series. Returns (products, orders, items, events, coupons).

    Cost: ~1.9 orders, ~1.9 items and ~1.6 events per customer, each statement one pass over
    generate_series or the two temp tables (~0.6 rows per customer), plus the index maintenance of
    orders_shop_consumer, the order_items key and behaviour_shop_consumer. Measured: the whole seed of
    200,000 customers took 51 s with it against 33 s without (PostgreSQL 18, the same loaded 2-core
    machine, the same hour): ~18 s for this part; 1,000,000 was not measured."""
    base_pid = await conn.fetchval("SELECT coalesce(max(product_id), 0) FROM products")
    pid = {key: base_pid + i + 1 for i, (key, *_rest) in enumerate(REPURCHASE_CATALOGUE)}
    rows = [(pid[key], shop_id, title, cat, Decimal(price), None, True) for key, title, cat, price, _ in REPURCHASE_CATALOGUE]
    await conn.copy_records_to_table("products", columns=PRODUCT_COLUMNS, records=rows)
    info = {key: (cat, Decimal(price), cycle) for key, _, cat, price, cycle in REPURCHASE_CATALOGUE}
    consumables = [key for key, *_, cycle in REPURCHASE_CATALOGUE if cycle]
    durables = list(REPURCHASE_PAIRS)
    sibling = {k: next(o for o in consumables if o != k and info[o][0] == info[k][0]) for k in consumables}
    args = {
        "lo": lo, "hi": hi, "seed": seed, "base": await conn.fetchval("SELECT coalesce(max(order_id), 0) FROM orders"),
        "ids": [pid[k] for k in consumables], "cycles": [info[k][2] for k in consumables],
        "prices": [info[k][1] for k in consumables], "now": now, "shop": shop_id,
        "dids": [pid[k] for k in durables], "dprices": [info[k][1] for k in durables],
        "bids": [pid[REPURCHASE_PAIRS[k]] for k in durables], "bprices": [info[REPURCHASE_PAIRS[k]][1] for k in durables],
        "sibs": [pid[sibling[k]] for k in consumables],
    }  # fmt: skip

    async def run(sql: str) -> int:
        used = [n for n in _RP_PARAMS if f"${n}" in sql]
        status = await conn.execute(_named(sql, used), *(args[n] for n in used))
        return int(status.split()[-1])

    await conn.execute(_RP_UNIFORM)
    await run(_RP_BUYERS)
    await run(_RP_DURABLES)
    n_orders = await run(_RP_ORDERS)
    n_items = await run(_RP_ITEMS)
    n_events = await run(_RP_EVENTS)
    await conn.execute("DROP TABLE rp_buyers, rp_durables")
    await conn.execute("DROP FUNCTION pg_temp.rp_u(bigint, int, bigint)")
    for key, coupon_id in REPURCHASE_COUPONS.items():
        await conn.execute(
            "INSERT INTO coupons (coupon_id, shop_id, name, valid_from, valid_to, stock, product_id)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7)",
            f"{shop_id}-{coupon_id}", shop_id, f"{info[key][0].removeprefix('rp_')} 满100减15",
            now - timedelta(days=7), now + timedelta(days=30), REPURCHASE_COUPON_STOCK, pid[key],
        )  # fmt: skip
    return len(rows), n_orders, n_items, n_events, len(REPURCHASE_COUPONS)


# --- acquisition prospects (K-ACQUIRE, examples/acquire.yaml) -----------------------------------
# seed_shop(..., acquire=True) adds what K-ACQUIRE needs on top of the shop: its join gift (R-AQ-2), a
# rival shop of the same industry, and prospects: platform consumers who are not the shop's customers
# (a platform phone, no shop row), each with carts, favourites and a view at the rival and two visits
# at the shop over the last 60 days: active in the industry, interacting with the shop, deep at another
# shop (R-AQ-1's industry_active and brand_switchers); one in three is an external member of the shop.
# $1 first prospect id, $2 last, $3 now, $4 shop, $5 rival shop.
_AQ_CONSUMERS = """
    INSERT INTO consumers (consumer_id, created_at, phone)
    SELECT g, $3::timestamptz - interval '400 days', '139' || lpad(g::text, 8, '0')
    FROM generate_series($1::bigint, $2::bigint) g
    ON CONFLICT (consumer_id) DO UPDATE SET phone = coalesce(consumers.phone, EXCLUDED.phone)
"""
_AQ_EVENTS = """
    INSERT INTO behaviour_events (shop_id, consumer_id, kind, occurred_at)
    SELECT CASE WHEN k.i <= 4 THEN $5 ELSE $4 END, g, k.kind,
           $3::timestamptz - make_interval(days => k.i * 9 + (g % 7)::int)
    FROM generate_series($1::bigint, $2::bigint) g
    CROSS JOIN (VALUES (1, 'cart'), (2, 'favourite'), (3, 'cart'), (4, 'view'), (5, 'visit'), (6, 'visit')) k(i, kind)
"""
_AQ_EXTERNAL = """
    INSERT INTO external_members (shop_id, consumer_id, matched_at)
    SELECT $4, g, $3::timestamptz - interval '30 days' FROM generate_series($1::bigint, $2::bigint) g
    WHERE g % 3 = 0 AND $5::text IS NOT NULL
    ON CONFLICT DO NOTHING
"""
AQ_JOIN_GIFT_TITLE = "10元无门槛券"


async def _seed_acquire(conn, *, shop_id: str, timezone: str, industry: str, lo: int, hi: int, now: datetime) -> int:
    """The join gift, the rival shop and the prospects lo..hi (inclusive); returns the events written."""
    rival = f"{shop_id}-rival"
    await conn.execute(
        "INSERT INTO shops (shop_id, name, timezone, industry) VALUES ($1, $1, $2, $3) ON CONFLICT (shop_id) DO NOTHING",
        rival, timezone, industry,
    )  # fmt: skip
    await conn.execute(
        "INSERT INTO member_benefits (benefit_id, shop_id, kind, title, valid_from, valid_to)"
        " VALUES ($1, $2, 'join_gift', $3, $4, $5) ON CONFLICT (benefit_id) DO NOTHING",
        f"{shop_id}-join-gift", shop_id, AQ_JOIN_GIFT_TITLE, now - timedelta(days=7), now + timedelta(days=30),
    )  # fmt: skip
    args = (lo, hi, now, shop_id, rival)
    await conn.execute(_AQ_CONSUMERS, *args[:3])
    status = await conn.execute(_AQ_EVENTS, *args)
    await conn.execute(_AQ_EXTERNAL, *args)
    return int(status.split()[-1])


# --- loading ---------------------------------------------------------------------------------


async def seed_shop(
    dsn: str,
    *,
    shop_id: str,
    customers: int = 100_000,
    timezone: str = "Asia/Shanghai",
    industry: str = "beauty",
    now: datetime | None = None,
    seed: int = 7,
    consumer_id_offset: int = 0,
    channel_mix: bool = True,
    repurchase: bool = False,
    acquire: bool = False,
) -> SeedResult:
    """Create shop `shop_id` (if absent) and load `customers` synthetic customers into it.

    Consumers are consumer_id_offset + 1 .. consumer_id_offset + customers, shared
    with any other shop seeded over the same range. channel_mix=False gives every
    customer every contact, valid, and no opt-outs, blacklist or deletion.
    repurchase=True adds the repurchase catalogue (REPURCHASE_CATALOGUE: consumables whose cycles
    are estimated from their orders, durables bought once with a consumable, category browsing and
    exclusive coupons; the K-REPURCHASE benchmark's shop).
    acquire=True adds K-ACQUIRE's join gift, a rival shop and customers/10 (at least 20) prospects after
    the customers' ids (`_seed_acquire`).
    Raises ValueError when the shop already has customers.
    """
    started = time.perf_counter()
    if now is None:
        now = datetime.now(UTC)
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    if customers < 0 or consumer_id_offset < 0:
        raise ValueError("customers and consumer_id_offset must be >= 0")
    ZoneInfo(timezone)  # fail early on a bad zone name

    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
            if await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM shop_customers WHERE shop_id = $1)", shop_id
            ):
                raise ValueError(f"shop {shop_id} already seeded")
            name = f"{shop_id} {_SHOP_NAMES.get(industry, '')}旗舰店"
            await conn.execute(
                "INSERT INTO shops (shop_id, name, timezone, industry, sms_signature) VALUES ($1, $2, $3, $4, $5)"
                " ON CONFLICT (shop_id) DO NOTHING",
                shop_id,
                name,
                timezone,
                industry,
                f"【{name}】",
            )
            # A configured EDM account (R-ED-4: email needs one), postpaid from a zero balance.
            await conn.execute("INSERT INTO edm_accounts (shop_id) VALUES ($1) ON CONFLICT (shop_id) DO NOTHING", shop_id)
            # SMS credits (R-AQ-5: no credit, no send): one recharge at the top tier, bought today.
            if not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM sms_credits WHERE shop_id = $1)", shop_id):
                from sluice.channels.sms import recharge

                await recharge(conn, shop_id, max(150_000, 4 * customers), now)
            # an existing shop keeps its own zone and industry; generate in those
            row = await conn.fetchrow("SELECT timezone, industry FROM shops WHERE shop_id = $1", shop_id)
            timezone, industry = row["timezone"], row["industry"]

            if customers:
                await conn.execute(
                    "INSERT INTO consumers (consumer_id, created_at)"
                    " SELECT g, $3::timestamptz - interval '1600 days' FROM generate_series($1::bigint, $2::bigint) g"
                    " ON CONFLICT (consumer_id) DO NOTHING",
                    consumer_id_offset + 1,
                    consumer_id_offset + customers,
                    now,
                )

            gen = _ShopGenerator(
                rng=random.Random(f"{seed}:{shop_id}"),
                shop_id=shop_id,
                now=now,
                tz=timezone,
                industry=industry,
                product_base=await conn.fetchval("SELECT coalesce(max(product_id), 0) FROM products"),
                n_products=min(200, max(20, customers // 20)),
                order_base=await conn.fetchval("SELECT coalesce(max(order_id), 0) FROM orders"),
                channel_mix=channel_mix,
            )
            await conn.copy_records_to_table("products", columns=PRODUCT_COLUMNS, records=gen.product_rows)

            day = timedelta(days=1)
            coupons = [
                (f"{shop_id}-welcome", "满199减20", now - 7 * day, now + 30 * day, 100_000),
                (f"{shop_id}-spring", "春季焕新券 (expired)", now - 60 * day, now - 30 * day, 5_000),
                (f"{shop_id}-vip", "会员专享9折券 (sold out)", now - 3 * day, now + 27 * day, 0),
            ]
            n_coupons = 0
            for c in coupons:
                status = await conn.execute(
                    "INSERT INTO coupons (coupon_id, shop_id, name, valid_from, valid_to, stock)"
                    " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (coupon_id) DO NOTHING",
                    c[0],
                    shop_id,
                    *c[1:],
                )
                n_coupons += int(status.split()[-1])

            n_orders = n_items = n_events = 0
            # Generating a chunk takes ~1/3 of the time its COPY keeps the server busy;
            # overlapping the two measured no faster. The thread only keeps the event
            # loop free (a chunk is ~0.5 s of CPU).
            end = consumer_id_offset + customers + 1
            for lo in range(consumer_id_offset + 1, end, CHUNK):
                sc, orders, items, events = await asyncio.to_thread(gen.chunk, lo, min(lo + CHUNK, end))
                await conn.copy_records_to_table("shop_customers", columns=SC_COLUMNS, records=sc)
                await conn.copy_records_to_table("orders", columns=ORDER_COLUMNS, records=orders)
                await conn.copy_records_to_table("order_items", columns=ITEM_COLUMNS, records=items)
                await conn.copy_records_to_table("behaviour_events", columns=EVENT_COLUMNS, records=events)
                n_orders += len(orders)
                n_items += len(items)
                n_events += len(events)
                del sc, orders, items, events
            n_products, n_coupons_rp = len(gen.product_rows), 0
            if repurchase and customers:
                extra = await _seed_repurchase(conn, shop_id=shop_id, lo=consumer_id_offset + 1,
                                               hi=consumer_id_offset + customers, now=now, seed=seed)  # fmt: skip
                n_products += extra[0]
                n_orders, n_items, n_events = n_orders + extra[1], n_items + extra[2], n_events + extra[3]
                n_coupons_rp = extra[4]
            if acquire:
                first = consumer_id_offset + customers + 1
                n_events += await _seed_acquire(conn, shop_id=shop_id, timezone=timezone, industry=industry, lo=first,
                                                hi=first + max(20, customers // 10) - 1, now=now)  # fmt: skip
        # outside the transaction, so the statistics see the committed rows
        await conn.execute(f"ANALYZE {', '.join(SEEDED_TABLES)}")
    finally:
        await conn.close()
    return SeedResult(
        shop_id=shop_id,
        customers=customers,
        orders=n_orders,
        order_items=n_items,
        events=n_events,
        products=n_products,
        coupons=n_coupons + n_coupons_rp,
        seconds=round(time.perf_counter() - started, 3),
    )


async def zones_into(conn: asyncpg.Connection, shop_id: str, tz: str) -> int:
    """Give the shop's customers who have a zone of their own (the seed's ~4.5%) the zone `tz` instead: a benchmark
    moves its shop into a zone whose send window is open now, and since R-WIN-1 sends a recipient with a zone
    inside their own window, its day would otherwise wait hours for theirs. Who has a zone keeps one (the send
    path reads it only for them). Returns how many were moved."""
    moved = await conn.execute(
        "UPDATE shop_customers SET timezone = $2 WHERE shop_id = $1 AND timezone IS NOT NULL AND timezone <> $2",
        shop_id, tz,
    )  # fmt: skip
    return int(moved.split()[-1])
