"""The built-in announcement templates, in Chinese, seeded into the database at start.

They are written to be read aloud by a loudspeaker on a pole: short sentences, the
instruction before the explanation, numbers a villager can dial. Placeholders in braces
are filled from a broadcast's `params`; `{level_colour}` and `{level_grade}` come from the
emergency level itself (I red ... IV blue), so the words always match the alert tone.

Emergency templates whose placeholders all have defaults can be pre-positioned on the
terminals as they are (see `controller.prepositioning`); the defaults are therefore
chosen to make sense county-wide ("我县", "即日"). Where the duty officer must say where
to go (flood evacuation), the placeholder is required and the template is rendered at
the moment of use.

Seeding only adds templates that are missing: an edited built-in keeps its edits across
restarts, and `POST /api/templates/{id}/reset` brings back the text below.
"""

from __future__ import annotations

from typing import Any


def _ph(
    name: str,
    label: str,
    *,
    default: str | None = None,
    example: str | None = None,
    required: bool | None = None,
) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "required": default is None if required is None else required,
        "default": default,
        "example": example if example is not None else default,
    }


BUILTIN_TEMPLATES: tuple[dict[str, Any], ...] = (
    {
        "id": "forest_fire_warning",
        "name": "森林火险预警",
        "category": "forest_fire",
        "priority": "emergency",
        "level": 3,
        "body": (
            "森林火险{level_colour}预警：{place}森林火险等级高，{time}起全面禁止野外用火。"
            "严禁上坟烧纸、燃放鞭炮、焚烧秸秆和垃圾，进山人员不得携带火种。"
            "发现火情请立即拨打森林火警电话{hotline}。"
        ),
        "placeholders": [
            _ph("place", "地点", default="我县", example="青山镇"),
            _ph("time", "开始时间", default="即日", example="今天中午12点"),
            _ph("hotline", "火警电话", default="12119"),
        ],
    },
    {
        "id": "fire_prevention_reminder",
        "name": "森林防火提醒",
        "category": "fire_prevention",
        "priority": "notice",
        "level": None,
        "body": (
            "防火提醒：当前正值森林防火{season}，天干物燥，请广大村民做到："
            "不在林区吸烟，不上坟烧纸，不燃放鞭炮，不焚烧秸秆。"
            "森林防火，人人有责。发现火情请拨打{hotline}。"
        ),
        "placeholders": [
            _ph("season", "时期", default="紧要期", example="关键期"),
            _ph("hotline", "火警电话", default="12119"),
        ],
    },
    {
        "id": "heavy_rain_warning",
        "name": "暴雨预警",
        "category": "flood",
        "priority": "emergency",
        "level": 2,
        "body": (
            "{issuer}发布暴雨{level_colour}预警：{time}{place}将有强降雨，"
            "山洪和地质灾害风险高。请沿河、低洼地带和山脚下的村民立即转移到安全地带，"
            "不要涉水过河，不要在河边逗留。需要救援请拨打{hotline}。"
        ),
        "placeholders": [
            _ph("issuer", "发布单位", default="县气象台"),
            _ph("time", "时间", default="未来几小时", example="今天夜间到明天白天"),
            _ph("place", "地点", default="我县", example="青山镇、石门乡"),
            _ph("hotline", "救援电话", default="119"),
        ],
    },
    {
        "id": "flood_evacuation",
        "name": "洪水紧急转移通知",
        "category": "flood",
        "priority": "emergency",
        "level": 1,
        "body": (
            "紧急通知：受强降雨影响，{river}水位快速上涨，{place}的村民请立即转移到{shelter}。"
            "请带好身份证件和必要物品，照顾好老人和孩子，转移后不要返回危险区域。"
        ),
        "placeholders": [
            _ph("river", "河流", default="河道", example="清水河"),
            _ph("place", "转移范围", example="沿河一组、二组"),
            _ph("shelter", "安置点", example="村小学"),
        ],
    },
    {
        "id": "typhoon_warning",
        "name": "台风预警",
        "category": "typhoon",
        "priority": "emergency",
        "level": 2,
        "body": (
            "台风{level_colour}预警：{typhoon}台风预计{time}影响{place}，将出现狂风暴雨。"
            "请村民加固门窗和屋顶，收好晾晒物品，渔船立即回港，"
            "危房和临时工棚里的人员马上转移。台风期间不要外出。"
        ),
        "placeholders": [
            _ph("typhoon", "台风名称", default="", example="今年第5号"),
            _ph("time", "影响时间", default="未来24小时", example="今天夜间"),
            _ph("place", "地点", default="我县"),
        ],
    },
    {
        "id": "earthquake_warning",
        "name": "地震预警",
        "category": "earthquake",
        "priority": "emergency",
        "level": 1,
        "body": (
            "地震预警！地震预警！{place}即将出现有感地震，请立即就近避险："
            "在屋里的，躲到结实的桌子下面或墙角，远离窗户；"
            "在屋外的，远离房屋、电线杆和山坡。不要乘坐电梯，不要慌乱拥挤。"
        ),
        "placeholders": [_ph("place", "地点", default="我县")],
    },
    {
        "id": "epidemic_alert",
        "name": "疫情防控通知",
        "category": "epidemic",
        "priority": "emergency",
        "level": 3,
        "body": (
            "疫情防控通知：{place}发现{disease}病例，请村民{measures}。"
            "如有发热、咳嗽等症状，请及时到{clinic}就诊，并主动报告。咨询电话{hotline}。"
        ),
        "placeholders": [
            _ph("place", "地点", default="我县"),
            _ph("disease", "病种", default="传染病", example="流感"),
            _ph("measures", "防护要求", default="减少聚集、佩戴口罩、勤洗手、常通风"),
            _ph("clinic", "就诊地点", default="村卫生室"),
            _ph("hotline", "咨询电话", default="12320"),
        ],
    },
    {
        "id": "anti_fraud_reminder",
        "name": "反诈提醒",
        "category": "anti_fraud",
        "priority": "notice",
        "level": None,
        "body": (
            "反诈提醒：近期电信网络诈骗案件多发。凡是自称公检法要求转账的、"
            "网上刷单返利的、冒充客服退款的、冒充亲友借钱的，都是诈骗！"
            "不听、不信、不转账。遇到可疑情况请拨打反诈专线{hotline}，或者拨打110报警。"
        ),
        "placeholders": [_ph("hotline", "反诈专线", default="96110")],
    },
    {
        "id": "road_safety_reminder",
        "name": "交通安全提醒",
        "category": "road_safety",
        "priority": "notice",
        "level": None,
        "body": (
            "交通安全提醒：{occasion}出行车辆多，请大家遵守交通规则。"
            "骑电动车、摩托车要戴头盔，不坐超员车，不开快车，不酒后驾车，农用车不载人。"
            "老人和孩子过马路要注意来往车辆。"
        ),
        "placeholders": [_ph("occasion", "时段", default="近期", example="春节期间")],
    },
    {
        "id": "anti_drug_campaign",
        "name": "禁毒宣传",
        "category": "anti_drug",
        "priority": "notice",
        "level": None,
        "body": (
            "禁毒宣传：毒品害人害己害家庭。请大家珍爱生命、远离毒品，"
            "不吸毒、不种毒、不贩毒。发现涉毒线索请拨打{hotline}举报，严格保密。"
        ),
        "placeholders": [_ph("hotline", "举报电话", default="110")],
    },
    {
        "id": "civility_reminder",
        "name": "文明新风倡议",
        "category": "civility",
        "priority": "routine",
        "level": None,
        "body": (
            "文明新风倡议：请大家移风易俗，红白喜事从简办，不大操大办，不铺张浪费；"
            "爱护环境，垃圾分类投放，不乱扔乱倒；孝老爱亲，邻里和睦。"
            "让我们共同建设文明{place}。"
        ),
        "placeholders": [_ph("place", "地点", default="乡村", example="青山村")],
    },
    {
        "id": "rural_revitalisation_notice",
        "name": "乡村振兴政策宣传",
        "category": "rural_revitalisation",
        "priority": "notice",
        "level": None,
        "body": (
            "乡村振兴政策宣传：{topic}。有意向的村民请于{deadline}前到{place}咨询报名，"
            "联系电话{phone}。"
        ),
        "placeholders": [
            _ph("topic", "内容", example="县农业农村局将举办水稻种植技术免费培训"),
            _ph("deadline", "截止日期", example="5月20日"),
            _ph("place", "报名地点", default="村委会"),
            _ph("phone", "联系电话", example="12345678"),
        ],
    },
    {
        "id": "meeting_notice",
        "name": "会议通知",
        "category": "meeting",
        "priority": "notice",
        "level": None,
        "body": "会议通知：定于{time}在{place}召开{meeting}，请{attendees}准时参加。",
        "placeholders": [
            _ph("time", "时间", example="本周六上午9点"),
            _ph("place", "地点", default="村委会会议室"),
            _ph("meeting", "会议名称", example="村民代表大会"),
            _ph("attendees", "参会人员", default="各户代表"),
        ],
    },
    {
        # DESIGN.md §7: after a mistaken alert, the retraction must be ready at once
        # (Hawaii 2018 took 38 minutes). An emergency, so it interrupts whatever is
        # playing; cancel the mistaken broadcast first, then send this.
        "id": "false_alarm_correction",
        "name": "误报更正",
        "category": "other",
        "priority": "emergency",
        "level": 4,
        "repeat": 2,
        "body": (
            "更正通知：{time}播发的{subject}是误报，现予撤销。"
            "请大家不要惊慌，恢复正常生产生活。特此更正。"
        ),
        "placeholders": [
            _ph("time", "误报时间", default="刚才", example="今天上午10点"),
            _ph("subject", "误报内容", default="紧急警报", example="暴雨红色预警"),
        ],
    },
)
