"""The pipeline, one module per stage in the order a notification travels:

1. ``stage1_shorten``     a new demand row → the event's short URL (Bitly), once
2. ``stage2_generate``    a due sale → one ``pending`` notification per fan (beat claims sales;
                          a chunk of demand rows → its items: ``fan_rows``)
3. ``stage3_schedule``    ``pending → scheduled`` within quiet hours and the rate budget (beat)
4. ``stage4_send``        ``scheduled → sending → sent | retry | failed`` through the SMS provider
                          (one send: ``send_step``, ``send_outcomes``, ``sent_records``)
5. ``stage5_sms_status``  delivery receipts and STOP replies from the provider's status stream

``routing`` says which record or status change wakes which task; ``records`` decodes the
stream records the bridges read. Each task is a thin shell over plain functions of its module.
"""
