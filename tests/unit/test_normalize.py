"""What the loudspeakers say for the numbers in real notices."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from controller.speech.normalize import (
    PronunciationDictionary,
    normalize,
    read_digits,
    read_number,
)

NO_DICTIONARY = PronunciationDictionary()

PHRASES = [
    # 森林防火
    ("严禁野外用火，发现火情请立即拨打119", "严禁野外用火，发现火情请立即拨打幺幺九"),
    ("森林防火报警电话12119", "森林防火报警电话幺二幺幺九"),
    (
        "森林防火期为每年11月1日至次年5月31日",
        "森林防火期为每年十一月一日至次年五月三十一日",
    ),
    ("今天森林火险等级为4级，属高度危险", "今天森林火险等级为四级，属高度危险"),
    ("全县164个村已落实护林员328名", "全县一百六十四个村已落实护林员三百二十八名"),
    ("进山检查站每天8:00-18:00值守", "进山检查站每天八点至十八点值守"),
    ("清明期间共劝返上坟烧纸群众2000余人", "清明期间共劝返上坟烧纸群众两千余人"),
    ("2024-2025年度森林防火工作会议", "二零二四至二零二五年度森林防火工作会议"),
    ("野外违规用火最高罚款3000元", "野外违规用火最高罚款三千元"),
    # 防汛、暴雨
    (
        "预计7月20日至22日累计降雨量100~150毫米，局地超过250毫米",
        "预计七月二十日至二十二日累计降雨量一百到一百五十毫米，局地超过两百五十毫米",
    ),
    ("过去3小时降雨量已达50mm", "过去三小时降雨量已达五十毫米"),
    ("请低洼地区群众于今晚20:00前转移到安置点", "请低洼地区群众于今晚二十点前转移到安置点"),
    ("水库水位已超汛限水位0.85米", "水库水位已超汛限水位零点八五米"),
    ("河道水位上涨1.2米", "河道水位上涨一点二米"),
    ("长江流量达到52000m³/s", "长江流量达到五万二千立方米每秒"),
    ("防汛值班电话：0543-8123456", "防汛值班电话：零五四三，八幺二三四五六"),
    (
        "应急管理局24小时值班电话：0543-8123456转8001",
        "应急管理局二十四小时值班电话：零五四三，八幺二三四五六转八零零幺",
    ),
    ("本次洪水为1000年一遇", "本次洪水为一千年一遇"),
    (
        "暴雨红色预警：3小时内降雨量将达100毫米以上",
        "暴雨红色预警：三小时内降雨量将达一百毫米以上",
    ),
    ("2024年7月15日起进入主汛期", "二零二四年七月十五日起进入主汛期"),
    ("主汛期为6-8月", "主汛期为六到八月"),
    ("预计降雨量20~30毫米", "预计降雨量二十到三十毫米"),
    ("河道警戒水位为2.5米", "河道警戒水位为二点五米"),
    # 台风
    (
        "第11号台风“摩羯”中心附近最大风力15级（50米/秒）",
        "第十一号台风“摩羯”中心附近最大风力十五级（五十米每秒）",
    ),
    (
        "受台风影响，预计24小时内将有8-10级大风，阵风12级",
        "受台风影响，预计二十四小时内将有八到十级大风，阵风十二级",
    ),
    ("台风以每小时20公里的速度向西北方向移动", "台风以每小时二十公里的速度向西北方向移动"),
    ("台风中心距离海岸约300公里", "台风中心距离海岸约三百公里"),
    ("请于18:30前将渔船回港避风", "请于十八点三十分前将渔船回港避风"),
    ("沿海风力3-5级", "沿海风力三到五级"),
    ("8级大风", "八级大风"),
    # 地震
    (
        "某地发生4.5级地震，震源深度10千米",
        "某地发生四点五级地震，震源深度十千米",
    ),
    # 反诈
    ("接到陌生电话请拨打96110咨询", "接到陌生电话请拨打九六幺幺零咨询"),
    ("全国反诈专线96110", "全国反诈专线九六幺幺零"),
    (
        "冒充公检法的都是诈骗，请拨打110报警或96110咨询",
        "冒充公检法的都是诈骗，请拨打幺幺零报警或九六幺幺零咨询",
    ),
    ("已有3名群众被骗，损失共计5.6万元", "已有三名群众被骗，损失共计五点六万元"),
    ("刷单返利诈骗占比达35%", "刷单返利诈骗占比达百分之三十五"),
    ("手机尾号5678的村民请注意", "手机尾号五六七八的村民请注意"),
    ("反诈民警联系电话：13812345678", "反诈民警联系电话：幺三八，幺二三四，五六七八"),
    ("凡是要求转账到“安全账户”的，都是诈骗！", "凡是要求转账到“安全账户”的，都是诈骗！"),
    ("拨打110时请讲清楚详细地址", "拨打幺幺零时请讲清楚详细地址"),
    ("报警电话110、火警119、急救120", "报警电话幺幺零、火警幺幺九、急救幺二零"),
    ("紧急电话110,119,120", "紧急电话幺幺零,幺幺九,幺二零"),
    # 疫情防控
    ("体温超过37.3℃请及时就医", "体温超过三十七点三摄氏度请及时就医"),
    (
        "疫苗接种时间：8:30-11:30、14:00-17:00",
        "疫苗接种时间：八点三十分至十一点三十分、十四点至十七点",
    ),
    ("60岁以上老人请接种第2剂疫苗", "六十岁以上老人请接种第二剂疫苗"),
    ("全县疫苗接种率达到95%", "全县疫苗接种率达到百分之九十五"),
    ("发热门诊咨询电话：0543-12345678", "发热门诊咨询电话：零五四三，幺二三四五六七八"),
    (
        "出现发热症状请拨打120或12320卫生热线",
        "出现发热症状请拨打幺二零或幺二三二零卫生热线",
    ),
    ("本周新增病例12.5%", "本周新增病例百分之十二点五"),
    # 道路交通安全
    ("发生交通事故请拨打122", "发生交通事故请拨打幺二二"),
    ("交通事故同比下降12.5%", "交通事故同比下降百分之十二点五"),
    ("头盔佩戴率提高了10-20%", "头盔佩戴率提高了百分之十到百分之二十"),
    ("G205国道K123路段施工", "G二零五国道K一二三路段施工"),
    ("2个村道路口新增减速带", "两个村道路口新增减速带"),
    ("高速公路限速120公里/小时", "高速公路限速一百二十公里每小时"),
    ("全程限速60km/h", "全程限速六十公里每小时"),
    (
        "雾天能见度低于200米时，车速不得超过40公里",
        "雾天能见度低于两百米时，车速不得超过四十公里",
    ),
    ("120急救车已到达现场", "幺二零急救车已到达现场"),
    # 会议通知
    (
        "请于3月5日（星期二）上午9:00在村委会2楼会议室召开会议",
        "请于三月五日（星期二）上午九点在村委会二楼会议室召开会议",
    ),
    (
        "两委换届选举定于2024年12月20日举行，投票时间8:00至12:00",
        "两委换届选举定于二零二四年十二月二十日举行，投票时间八点至十二点",
    ),
    ("会议时间：2025/1/8 14:30", "会议时间：二零二五年一月八日 十四点三十分"),
    ("会议定于2025-03-05召开", "会议定于二零二五年三月五日召开"),
    ("上午9点30分在村部开会", "上午九点三十分在村部开会"),
    ("下午2点半集合", "下午两点半集合"),
    ("凌晨2:00起停电", "凌晨两点起停电"),
    ("明早7:05出发，07:00集合", "明早七点零五分出发，七点集合"),
    ("夜间施工时间22:00至06:30", "夜间施工时间二十二点至六点三十分"),
    ("禁止燃放时间为22:00至次日6:00", "禁止燃放时间为二十二点至次日六点"),
    ("早上6点-8点限行", "早上六点至八点限行"),
    ("2023年3月-5月为春季防火期", "二零二三年三月到五月为春季防火期"),
    ("7月15日-20日停水", "七月十五日到二十日停水"),
    ("活动时间8:00~9:00", "活动时间八点至九点"),
    (
        "请各户于15号前缴纳医保，每人380元",
        "请各户于十五号前缴纳医保，每人三百八十元",
    ),
    ("联系人：王主任，电话138-1234-5678", "联系人：王主任，电话幺三八，幺二三四，五六七八"),
    ("咨询电话 400-123-4567", "咨询电话 四零零，幺二三，四五六七"),
    ("请拨打12345政务服务便民热线反映", "请拨打幺二三四五政务服务便民热线反映"),
    ("消费投诉请拨打12315", "消费投诉请拨打幺二三幺五"),
    ("本月共收到群众来电1,234次", "本月共收到群众来电一千二百三十四次"),
    ("全县共有2万人参加", "全县共有两万人参加"),
    ("今年补贴标准为每亩120元", "今年补贴标准为每亩一百二十元"),
    ("本次共发放补助资金120000元", "本次共发放补助资金十二万元"),
    ("按1:1比例配套", "按一比一比例配套"),
    ("2025年", "二零二五年"),
    ("2-3天内完成", "两到三天内完成"),
    ("获奖名单第1至2名", "获奖名单第一至二名"),
    ("截至2024年底全县共有12560人", "截至二零二四年底全县共有一万二千五百六十人"),
    ("编号007", "编号零零七"),
    ("24h值班", "二十四小时值班"),
    ("水深达2m", "水深达两米"),
    ("拨打12345，按2号键", "拨打幺二三四五，按二号键"),
    ("号码为：12345678", "号码为：幺二三四五六七八"),
    ("电话：（0543）8123456", "电话：零五四三，八幺二三四五六"),
    ("¥2000", "两千元"),
    ("东经120.5°", "东经一百二十点五度"),
    # 高温、寒潮
    ("最高气温35℃", "最高气温三十五摄氏度"),
    ("最低气温-5℃，注意防寒", "最低气温零下五摄氏度，注意防寒"),
    ("未来三天气温35-38℃", "未来三天气温三十五到三十八摄氏度"),
    ("夜间最低气温-3~-1℃", "夜间最低气温零下三到零下一摄氏度"),
    ("寒潮来袭，气温将下降6-8℃", "寒潮来袭，气温将下降六到八摄氏度"),
    ("夜间最低零下5°C", "夜间最低零下五摄氏度"),
    ("PM2.5浓度为75微克/立方米", "PM二点五浓度为七十五微克每立方米"),
    # 没有上下文的数字按数量读
    ("10000", "一万"),
    ("120000", "十二万"),
    ("3005", "三千零五"),
    ("0.5", "零点五"),
    ("12.35", "十二点三五"),
    ("12,345人", "一万二千三百四十五人"),
    ("全角数字１２３４５", "全角数字幺二三四五"),
]


@pytest.mark.parametrize(("text", "spoken"), PHRASES)
def test_notice_phrases(text: str, spoken: str) -> None:
    assert normalize(text, dictionary=NO_DICTIONARY) == spoken


YUE_PHRASES = [
    ("接到陌生电话请拨打96110咨询", "接到陌生电话请拨打九六一一零咨询"),
    ("报警请拨110", "报警请拨一一零"),
    ("联系电话：13812345678", "联系电话：一三八，一二三四，五六七八"),
    ("举报电话：0755-12345678", "举报电话：零七五五，一二三四五六七八"),
    ("请于18:30前到村委会", "请于十八点三十分前到村委会"),
    ("补贴2000元", "补贴两千元"),
    ("最低气温-5℃", "最低气温零下五摄氏度"),
]


@pytest.mark.parametrize(("text", "spoken"), YUE_PHRASES)
def test_cantonese_reads_one_as_yi(text: str, spoken: str) -> None:
    assert normalize(text, lang="yue", dictionary=NO_DICTIONARY) == spoken


@pytest.mark.parametrize(
    ("number", "spoken"),
    [
        ("0", "零"),
        ("2", "二"),
        ("10", "十"),
        ("11", "十一"),
        ("12", "十二"),
        ("20", "二十"),
        ("100", "一百"),
        ("101", "一百零一"),
        ("110", "一百一十"),
        ("200", "两百"),
        ("1000", "一千"),
        ("1001", "一千零一"),
        ("1010", "一千零一十"),
        ("2000", "两千"),
        ("3005", "三千零五"),
        ("10000", "一万"),
        ("10010", "一万零一十"),
        ("20000", "两万"),
        ("22000", "两万二千"),
        ("100100", "十万零一百"),
        ("120000", "十二万"),
        ("200000", "二十万"),
        ("100000000", "一亿"),
        ("100001000", "一亿零一千"),
        ("1000000000000", "一万亿"),
        ("1,000", "一千"),
        ("007", "七"),
        ("1.2", "一点二"),
        ("0.5", "零点五"),
        ("12.35", "十二点三五"),
        ("2.5", "二点五"),
        ("0.50", "零点五零"),
        ("-5", "负五"),
        ("-0.5", "负零点五"),
    ],
)
def test_read_number(number: str, spoken: str) -> None:
    assert read_number(number) == spoken


@pytest.mark.parametrize("bad", ["", "abc", "1.2.3", "--5", "1,00", "5%"])
def test_read_number_rejects_non_numbers(bad: str) -> None:
    with pytest.raises(ValueError):
        read_number(bad)


@pytest.mark.parametrize(
    ("digits", "lang", "spoken"),
    [
        ("96110", "cmn", "九六幺幺零"),
        ("110", "cmn", "幺幺零"),
        ("119", "cmn", "幺幺九"),
        ("120", "cmn", "幺二零"),
        ("12345", "cmn", "幺二三四五"),
        ("12315", "cmn", "幺二三幺五"),
        ("0", "cmn", "零"),
        ("0755-12345678", "cmn", "零七五五，幺二三四五六七八"),
        ("13812345678", "cmn", "幺三八幺二三四五六七八"),
        ("(0755) 1234-5678", "cmn", "零七五五，幺二三四，五六七八"),
        ("96110", "yue", "九六一一零"),
        ("0755-12345678", "yue", "零七五五，一二三四五六七八"),
    ],
)
def test_read_digits(digits: str, lang: str, spoken: str) -> None:
    assert read_digits(digits, lang=lang) == spoken


@pytest.mark.parametrize("bad", ["", "---", "12a45", "1.5"])
def test_read_digits_rejects_non_phone_numbers(bad: str) -> None:
    with pytest.raises(ValueError):
        read_digits(bad)


def test_unknown_language_is_refused() -> None:
    with pytest.raises(ValueError, match="lang"):
        normalize("拨打110", lang="eng")
    with pytest.raises(ValueError, match="lang"):
        read_digits("110", lang="en")


# ------------------------------------------------------------------ dictionary


def test_dictionary_longest_match_wins() -> None:
    dictionary = PronunciationDictionary.from_mapping({"坂": "板", "长坂坡": "长坂坡"})
    assert dictionary.apply("长坂坡") == "长坂坡"
    assert dictionary.apply("坂上") == "板上"


def test_dictionary_spoken_forms_are_not_rewritten_again() -> None:
    dictionary = PronunciationDictionary.from_mapping({"甲": "乙", "乙": "丙"})
    assert dictionary.apply("甲乙") == "乙丙"


def test_dictionary_is_applied_before_numbers() -> None:
    dictionary = PronunciationDictionary.from_mapping({"12345": "市民热线"})
    assert normalize("有事找12345，电话12345", dictionary=dictionary) == (
        "有事找市民热线，电话市民热线"
    )


def test_dictionary_loads_json(tmp_path: Path) -> None:
    path = tmp_path / "pronunciations.json"
    path.write_text(json.dumps({"单县": "善县", "单": "善"}, ensure_ascii=False), "utf-8")
    dictionary = PronunciationDictionary.load(path)
    assert dictionary.entries == {"单县": "善县", "单": "善"}
    assert normalize("单县发布暴雨预警", dictionary=dictionary) == "善县发布暴雨预警"


def test_dictionary_save_and_load_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "pronunciations.json"
    original = PronunciationDictionary.from_mapping({"六安": "陆安"})
    original.add("蚌埠", "泵埠")
    original.save(path)
    assert PronunciationDictionary.load(path) == original


@pytest.mark.parametrize("content", ['["单县", "善县"]', '{"单县": 1}', '{"": "空"}', "{"])
def test_dictionary_rejects_malformed_json(tmp_path: Path, content: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content, "utf-8")
    with pytest.raises(ValueError):
        PronunciationDictionary.load(path)


def test_dictionary_edits_take_effect() -> None:
    dictionary = PronunciationDictionary()
    assert dictionary.apply("蚌埠") == "蚌埠"
    dictionary.add("蚌埠", "泵埠")
    assert dictionary.apply("蚌埠市") == "泵埠市"
    dictionary.remove("蚌埠")
    assert dictionary.apply("蚌埠市") == "蚌埠市"
    assert len(dictionary) == 0


def test_merged_dictionary_prefers_the_county_entries() -> None:
    county = PronunciationDictionary.from_mapping({"六安": "六安", "长坂坡": "长坂坡"})
    merged = PronunciationDictionary.default().merged(county)
    assert merged.apply("六安单县") == "六安善县"
    assert "长坂坡" in merged


@pytest.mark.parametrize(
    ("written", "spoken"),
    [("单县", "善县"), ("六安", "陆安"), ("蚌埠", "泵埠"), ("番禺", "潘禺"), ("台州", "胎州")],
)
def test_default_dictionary_place_names(written: str, spoken: str) -> None:
    assert PronunciationDictionary.default().apply(f"{written}市") == f"{spoken}市"


def test_normalize_uses_the_default_dictionary() -> None:
    assert normalize("六安市、蚌埠市今天最高气温38℃") == "陆安市、泵埠市今天最高气温三十八摄氏度"


def test_default_dictionary_is_mandarin_only() -> None:
    assert len(PronunciationDictionary.default("yue")) == 0
    assert normalize("六安市", lang="yue") == "六安市"


def test_default_dictionary_copies_are_independent() -> None:
    mine = PronunciationDictionary.default()
    mine.remove("单县")
    assert "单县" in PronunciationDictionary.default()
    assert normalize("单县") == "善县"
